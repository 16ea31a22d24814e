//! LAVA test signals read from a console stream, and the shell helpers that emit them.
//!
//! A test definition reports through `lava-test-case` and friends, which print
//! lines like `<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass>`. On a serial
//! console the kernel may print in the middle of such a line, so the parser
//! works on lines, removes interleaved kernel messages (`[   12.345678] ...`)
//! and joins a signal that was cut in two before parsing it.

use regex::Regex;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// One parsed signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    StartRun {
        name: String,
    },
    EndRun {
        name: String,
    },
    TestCase {
        id: String,
        result: String,
        measurement: Option<String>,
        units: Option<String>,
    },
    TestSetStart {
        name: String,
    },
    TestSetStop,
    TestRaise {
        reason: String,
    },
    /// A signal labd does not act on (STARTTC, ENDTC, a malformed TESTCASE,
    /// ...): kept so that it can be logged and counted.
    Other {
        kind: String,
        body: String,
    },
}

const PREFIX: &str = "<LAVA_SIGNAL_";
/// A signal longer than this is garbage, not a signal: the carry is dropped.
const MAX_CARRY: usize = 4096;

fn kernel_stamp() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Invariant: a constant, valid pattern.
    RE.get_or_init(|| Regex::new(r"\[\s*\d+\.\d+\]").expect("valid regex"))
}

fn signal_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Invariant: a constant, valid pattern.
    RE.get_or_init(|| Regex::new(r"<LAVA_SIGNAL_([A-Z]+)((?:\s[^<>]*)?)>").expect("valid regex"))
}

/// A streaming parser: feed it console bytes, take signals out.
#[derive(Debug, Default)]
pub struct SignalParser {
    line: Vec<u8>,
    carry: String,
}

impl SignalParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the signals completed by them, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            if self.line.is_empty() && self.carry.is_empty() {
                // Most console lines hold no signal. With nothing carried,
                // skip straight to the line of the next `<`.
                match memchr::memchr(b'<', rest) {
                    None => {
                        let start = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
                        rest = &rest[start..];
                        break;
                    }
                    Some(p) => {
                        let start = memchr::memrchr(b'\n', &rest[..p]).map_or(0, |i| i + 1);
                        rest = &rest[start..];
                    }
                }
            }
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                break;
            };
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            if self.line.is_empty() {
                self.line_done(&clean(line), &mut out);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_done(&clean(&whole), &mut out);
            }
        }
        // An unfinished line waits for the rest of it, bounded.
        let room = (MAX_CARRY * 4).saturating_sub(self.line.len());
        self.line.extend_from_slice(&rest[..rest.len().min(room)]);
        out
    }

    fn line_done(&mut self, raw: &str, out: &mut Vec<Signal>) {
        // A kernel message cuts the user's line: keep what came before it and
        // join it with the next line, where the user's output continues.
        let (user, cut) = match kernel_stamp().find(raw) {
            Some(m) => (&raw[..m.start()], true),
            None => (raw, false),
        };
        let mut text = std::mem::take(&mut self.carry);
        text.push_str(user);
        for cap in signal_re().captures_iter(&text) {
            out.push(
                parse_signal(&cap[1], cap[2].trim()).unwrap_or_else(|| Signal::Other {
                    kind: cap[1].to_owned(),
                    body: cap[2].trim().to_owned(),
                }),
            );
        }
        // Whatever follows the last complete signal may be a signal still
        // being printed; carry it when it looks like one.
        let tail_start = signal_re().find_iter(&text).last().map_or(0, |m| m.end());
        let tail = &text[tail_start..];
        let open = tail.rfind(PREFIX).map(|i| &tail[i..]).or_else(|| {
            (1..PREFIX.len())
                .rev()
                .find(|&n| tail.ends_with(&PREFIX[..n]))
                .map(|n| &tail[tail.len() - n..])
        });
        match open {
            Some(partial) if partial.len() < MAX_CARRY && !partial.contains('>') => {
                self.carry = partial.to_owned();
            }
            _ if cut && !user.is_empty() && user.len() < MAX_CARRY => {
                // The cut may have split a prefix we cannot recognise yet.
                self.carry = tail.to_owned();
            }
            _ => {}
        }
    }
}

/// A line as text, without carriage returns.
fn clean(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    if text.contains('\r') {
        text.replace('\r', "")
    } else {
        text.into_owned()
    }
}

fn kv(body: &str) -> BTreeMap<String, String> {
    body.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn parse_signal(name: &str, body: &str) -> Option<Signal> {
    match name {
        "STARTRUN" => Some(Signal::StartRun {
            name: body.split_whitespace().next()?.to_owned(),
        }),
        "ENDRUN" => Some(Signal::EndRun {
            name: body.split_whitespace().next()?.to_owned(),
        }),
        "TESTCASE" => {
            let m = kv(body);
            Some(Signal::TestCase {
                id: m.get("TEST_CASE_ID")?.clone(),
                result: m.get("RESULT")?.to_ascii_lowercase(),
                measurement: m.get("MEASUREMENT").cloned(),
                units: m.get("UNITS").cloned(),
            })
        }
        "TESTSET" => {
            let mut it = body.split_whitespace();
            match it.next()? {
                "START" => Some(Signal::TestSetStart {
                    name: it.next()?.to_owned(),
                }),
                "STOP" => Some(Signal::TestSetStop),
                _ => None,
            }
        }
        "TESTRAISE" => Some(Signal::TestRaise {
            reason: body.to_owned(),
        }),
        _ => None,
    }
}

/// Shell helpers sent to the board's shell before the first test, one line
/// each. POSIX shells (dash) refuse `-` in function names, so the functions
/// use `_` and aliases give them LAVA's names. The signal word is passed
/// through `%s` so that the echo of these lines never looks like a signal.
pub const SHELL_HELPERS: &[&str] = &[
    r#"lava_test_case() { _ltc_n="$1"; shift; _ltc_r=""; _ltc_m=""; _ltc_u=""; if [ "$1" = "--shell" ]; then shift; "$@"; if [ $? -eq 0 ]; then _ltc_r=pass; else _ltc_r=fail; fi; else while [ $# -gt 0 ]; do case "$1" in --result) _ltc_r="$2"; shift 2;; --measurement) _ltc_m="$2"; shift 2;; --units) _ltc_u="$2"; shift 2;; *) shift;; esac; done; fi; printf '<LAVA_SIGNAL_%s TEST_CASE_ID=%s RESULT=%s%s%s>\n' TESTCASE "$_ltc_n" "${_ltc_r:-unknown}" "${_ltc_m:+ MEASUREMENT=$_ltc_m}" "${_ltc_u:+ UNITS=$_ltc_u}"; }"#,
    r#"lava_test_set() { case "$1" in start) printf '<LAVA_SIGNAL_%s START %s>\n' TESTSET "$2";; stop) printf '<LAVA_SIGNAL_%s STOP>\n' TESTSET;; esac; }"#,
    r#"lava_test_raise() { printf '<LAVA_SIGNAL_%s %s>\n' TESTRAISE "$*"; }"#,
    r#"alias lava-test-case=lava_test_case lava-test-set=lava_test_set lava-test-raise=lava_test_raise"#,
];

/// The line that emits a STARTRUN or ENDRUN signal for a definition.
pub fn run_marker(which: &str, name: &str, uuid: &str) -> String {
    format!("printf '<LAVA_SIGNAL_%s {name} {uuid}>\\n' {which}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(id: &str, r: &str) -> Signal {
        Signal::TestCase {
            id: id.into(),
            result: r.into(),
            measurement: None,
            units: None,
        }
    }

    #[test]
    fn parses_all_kinds() {
        let mut p = SignalParser::new();
        let s = p.feed(b"<LAVA_SIGNAL_STARTRUN 0_smoke 42>\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a RESULT=pass>\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=m RESULT=pass MEASUREMENT=3.5 UNITS=s>\n<LAVA_SIGNAL_TESTSET START net>\n<LAVA_SIGNAL_TESTSET STOP>\n<LAVA_SIGNAL_TESTRAISE oops>\n<LAVA_SIGNAL_ENDRUN 0_smoke 42>\n");
        assert_eq!(
            s,
            vec![
                Signal::StartRun {
                    name: "0_smoke".into()
                },
                tc("a", "pass"),
                Signal::TestCase {
                    id: "m".into(),
                    result: "pass".into(),
                    measurement: Some("3.5".into()),
                    units: Some("s".into())
                },
                Signal::TestSetStart { name: "net".into() },
                Signal::TestSetStop,
                Signal::TestRaise {
                    reason: "oops".into()
                },
                Signal::EndRun {
                    name: "0_smoke".into()
                },
            ]
        );
    }

    #[test]
    fn split_at_every_byte() {
        let text = b"noise\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=fail>\r\nmore\r\n";
        for i in 0..text.len() {
            let mut p = SignalParser::new();
            let mut s = p.feed(&text[..i]);
            s.extend(p.feed(&text[i..]));
            assert_eq!(s, vec![tc("x", "fail")], "split at {i}");
        }
    }

    #[test]
    fn kernel_message_inside_signal() {
        let cases: &[&[u8]] = &[
            b"<LAVA_SIGNAL_TESTCASE TEST_CA[   12.345678] usb 1-1: new device\r\nSE_ID=k RESULT=pass>\r\n",
            b"<LAVA_SIGNAL_TESTCASE TEST_CA\r\n[   12.345678] usb 1-1: new device\r\nSE_ID=k RESULT=pass>\r\n",
            b"<LAVA_SIG[    3.1] random: crng init done\r\nNAL_TESTCASE TEST_CASE_ID=k RESULT=pass>\r\n",
            b"<LAVA_SIG\r\n[    3.1] random: crng init done\r\nNAL_TESTCASE TEST_CASE_ID=k RESULT=pass>\r\n",
            b"[    3.1] random: crng init done\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=k RESULT=pass>\r\n",
        ];
        for c in cases {
            let mut p = SignalParser::new();
            assert_eq!(
                p.feed(c),
                vec![tc("k", "pass")],
                "{}",
                String::from_utf8_lossy(c)
            );
            // However the reads cut the stream.
            for i in 0..c.len() {
                let mut p = SignalParser::new();
                let mut s = p.feed(&c[..i]);
                s.extend(p.feed(&c[i..]));
                assert_eq!(
                    s,
                    vec![tc("k", "pass")],
                    "{} split at {i}",
                    String::from_utf8_lossy(c)
                );
            }
        }
    }

    #[test]
    fn helper_echo_is_not_a_signal() {
        let mut p = SignalParser::new();
        for h in SHELL_HELPERS {
            assert!(p.feed(h.as_bytes()).is_empty());
            assert!(p.feed(b"\r\n").is_empty());
        }
        assert!(p
            .feed(run_marker("STARTRUN", "0_a", "1").as_bytes())
            .is_empty());
        assert!(p.feed(b"\r\n").is_empty());
    }

    #[test]
    fn garbage_does_not_stick() {
        let mut p = SignalParser::new();
        let mut junk = b"<LAVA_SIGNAL_TESTCASE ".to_vec();
        junk.extend(std::iter::repeat_n(b'x', 10_000));
        junk.extend(b"\n\xff\xfe\x00<<>>\n");
        assert!(p.feed(&junk).is_empty());
        assert_eq!(
            p.feed(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=z RESULT=skip>\n"),
            vec![tc("z", "skip")]
        );
    }
}
