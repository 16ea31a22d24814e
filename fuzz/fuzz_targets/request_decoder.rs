//! The socket's request decoder on any line: an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &str| {
    if let Ok(req) = labd::protocol::parse_request(line) {
        // Whatever decodes encodes again.
        let again = serde_json::to_string(&req).expect("a decoded request encodes");
        labd::protocol::parse_request(&again).expect("an encoded request decodes");
    }
});
