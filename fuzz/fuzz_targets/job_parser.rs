//! The job parser on any text: it must answer, never panic, and every
//! error it gives must say where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match labd::job::parse("fuzz.yaml", text) {
        Ok(p) => {
            // A job that parses has what the runner relies on.
            assert!(!p.definition.actions.is_empty());
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            assert!(e.first().location.file.as_deref() == Some("fuzz.yaml"));
        }
    }
});
