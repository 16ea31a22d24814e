//! The LAVA signal parser on any console bytes, split at any point: no
//! panic, and the same signals whatever the split.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, bytes) = input;
    let mut whole = labd::signals::SignalParser::new();
    let all = whole.feed(bytes);
    let at = split as usize % (bytes.len() + 1);
    let mut parts = labd::signals::SignalParser::new();
    let mut split_signals = parts.feed(&bytes[..at]);
    split_signals.extend(parts.feed(&bytes[at..]));
    assert_eq!(all, split_signals);
});
