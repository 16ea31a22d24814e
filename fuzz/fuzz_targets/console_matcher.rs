//! The console matcher on any bytes with fixed prompts, split at any point:
//! no panic, and a prompt found in one read is found across two.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PATTERNS: &[&str] = &[
    "Hit any key to stop autoboot",
    "=> ",
    "Linux version [0-9]",
    "login:",
    "root@[a-z]+:[^#\n]*# ",
    "<LAVA_SIGNAL_ENDRUN [^>]+>",
];

/// Compiled once: compiling the patterns on every input would be most of
/// the fuzzer's time.
fn fresh() -> labd::matcher::Matcher {
    static M: std::sync::OnceLock<labd::matcher::Matcher> = std::sync::OnceLock::new();
    M.get_or_init(|| labd::matcher::Matcher::new(PATTERNS).expect("valid patterns"))
        .clone()
}

fuzz_target!(|input: (u16, &[u8])| {
    let (split, bytes) = input;
    let mut one = fresh();
    let whole = one.feed(bytes).map(|m| m.index);
    let at = split as usize % (bytes.len() + 1);
    let mut two = fresh();
    let split_hit = two
        .feed(&bytes[..at])
        .or_else(|| two.feed(&bytes[at..]))
        .map(|m| m.index);
    if whole.is_some() {
        assert!(split_hit.is_some(), "found in one read, missed across two");
    }
});
