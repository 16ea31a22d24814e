//! LAVA test signals read from a console stream, and the shell helpers that emit them.
//!
//! A test definition reports through `lava-test-case` and friends, which print
//! lines like `<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=x RESULT=pass>`. On a serial
//! console the kernel may print in the middle of such a line, so the parser
//! works on lines, removes interleaved kernel messages (`[   12.345678] ...`)
//! and joins a signal that was cut in two before parsing it.

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
    /// LAVA's `lava-test-reference`: a test case with a URL it refers to.
    TestReference {
        id: String,
        result: String,
        reference: String,
    },
    /// A signal labd does not act on (STARTTC, ENDTC, a malformed TESTCASE,
    /// ...): kept so that it can be logged and counted.
    Other {
        kind: String,
        body: String,
    },
    /// Text that starts like a signal but is not one (a `<` inside it,
    /// no closing `>` on its line, a lower-case kind): reported, never
    /// silently dropped. `text` is what was seen, at most [`MALFORMED_SHOWN`]
    /// bytes of it.
    Malformed {
        text: String,
    },
}

/// How much of a malformed signal's text is reported.
pub const MALFORMED_SHOWN: usize = 200;

fn malformed(text: &str) -> Signal {
    let mut end = text.len().min(MALFORMED_SHOWN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Signal::Malformed {
        text: text[..end].to_owned(),
    }
}

/// What [`signals_in`] finds.
enum Found<'a> {
    Signal { kind: &'a str, body: &'a str },
    Malformed(&'a str),
}

const PREFIX: &str = "<LAVA_SIGNAL_";

/// Searchers for [`PREFIX`], built once: building one per console line was
/// a tenth of the signal parser's time.
fn prefix_finder() -> &'static memchr::memmem::Finder<'static> {
    static F: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::Finder::new(PREFIX))
}

fn prefix_finder_rev() -> &'static memchr::memmem::FinderRev<'static> {
    static F: std::sync::OnceLock<memchr::memmem::FinderRev<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memchr::memmem::FinderRev::new(PREFIX))
}
/// A signal longer than this is garbage, not a signal: the carry is dropped.
const MAX_CARRY: usize = 4096;

/// Where a kernel message's timestamp (`[   12.345678]`) starts in `line`.
fn kernel_stamp(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    memchr::memchr_iter(b'[', b).find(|&open| {
        let mut i = open + 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let digits = |mut i: usize| {
            let from = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            (i > from).then_some(i)
        };
        let Some(i) = digits(i) else { return false };
        if b.get(i) != Some(&b'.') {
            return false;
        }
        matches!(digits(i + 1), Some(j) if b.get(j) == Some(&b']'))
    })
}

/// Calls `each` for every complete signal in `text`, in order:
/// `<LAVA_SIGNAL_KIND>` or `<LAVA_SIGNAL_KIND body>`, the body free of `<`
/// and `>`; and for every malformed one whose end is in `text` (a `<`
/// before the closing `>`, or a kind with other than capitals). Returns where the
/// last one ended (0 if none): a signal begun but not ended by the end of
/// `text` may still be finished by the next line. Hand-written: this runs
/// on every console line that holds a `<`, and a regex here was most of the
/// pipeline's time.
fn signals_in(text: &str, mut each: impl FnMut(Found<'_>)) -> usize {
    let b = text.as_bytes();
    let mut from = 0;
    let mut last_end = 0;
    while let Some(p) = prefix_finder().find(&b[from..]) {
        let start = from + p;
        let k0 = start + PREFIX.len();
        let mut k1 = k0;
        while k1 < b.len() && b[k1].is_ascii_uppercase() {
            k1 += 1;
        }
        from = start + 1;
        // `<LAVA_SIGNAL_` alone (a helper's `<LAVA_SIGNAL_%s` template) is
        // no attempt at a signal; one still being printed may yet end.
        if k1 == k0 || k1 >= b.len() {
            continue;
        }
        let (body, end) = if b[k1] == b'>' {
            ("", k1 + 1)
        } else if b[k1].is_ascii_whitespace() {
            match memchr::memchr2(b'<', b'>', &b[k1..]) {
                Some(q) if b[k1 + q] == b'>' => (&text[k1..k1 + q], k1 + q + 1),
                Some(q) => {
                    // A `<` inside: this one is broken; another may start there.
                    each(Found::Malformed(&text[start..k1 + q]));
                    from = k1 + q;
                    last_end = from;
                    continue;
                }
                None => continue,
            }
        } else {
            // A kind, then something no kind is made of.
            let stop = memchr::memchr2(b'<', b'>', &b[k1..])
                .map_or(b.len(), |q| k1 + q + usize::from(b[k1 + q] == b'>'));
            each(Found::Malformed(&text[start..stop]));
            from = stop.max(start + 1);
            last_end = stop;
            continue;
        };
        each(Found::Signal {
            kind: &text[k0..k1],
            body: body.trim(),
        });
        from = end;
        last_end = end;
    }
    last_end
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
        let (user, cut) = match kernel_stamp(raw) {
            Some(at) => (&raw[..at], true),
            None => (raw, false),
        };
        let carried = std::mem::take(&mut self.carry);
        let text: std::borrow::Cow<'_, str> = if carried.is_empty() {
            std::borrow::Cow::Borrowed(user)
        } else {
            std::borrow::Cow::Owned(carried + user)
        };
        let tail_start = signals_in(&text, |found| {
            out.push(match found {
                Found::Signal { kind, body } => {
                    parse_signal(kind, body).unwrap_or_else(|| Signal::Other {
                        kind: kind.to_owned(),
                        body: body.to_owned(),
                    })
                }
                Found::Malformed(t) => malformed(t),
            })
        });
        // Whatever follows the last complete signal may be a signal still
        // being printed; carry it when it looks like one (it starts at a `<`).
        let tail = &text[tail_start..];
        let open = memchr::memrchr(b'<', tail.as_bytes()).and_then(|_| {
            prefix_finder_rev()
                .rfind(tail.as_bytes())
                .map(|i| &tail[i..])
                .or_else(|| {
                    (1..PREFIX.len())
                        .rev()
                        .find(|&n| tail.ends_with(&PREFIX[..n]))
                        .map(|n| &tail[tail.len() - n..])
                })
        });
        match open {
            Some(partial) if partial.len() < MAX_CARRY && !partial.contains('>') => {
                self.carry = partial.to_owned();
            }
            _ if cut && !user.is_empty() && user.len() < MAX_CARRY => {
                // The cut may have split a prefix we cannot recognise yet.
                self.carry = tail.to_owned();
            }
            // A signal begun that can no longer end: too long to be one.
            Some(partial) if partial.len() >= MAX_CARRY && !partial.contains('>') => {
                out.push(malformed(partial))
            }
            _ => {}
        }
        // LAVA's `lava-signal: kmsg`: a definition's signal printed by the
        // kernel, whole, after its timestamp. The kernel prints a message
        // in one piece, so nothing of it is carried to the next line.
        if let (true, Some(at)) = (cut, kernel_stamp(raw)) {
            signals_in(&raw[at..], |found| {
                if let Found::Signal { kind, body } = found {
                    out.push(parse_signal(kind, body).unwrap_or_else(|| Signal::Other {
                        kind: kind.to_owned(),
                        body: body.to_owned(),
                    }));
                }
            });
        }
    }

    /// Ends the stream here (a step's end marker was seen): an unfinished
    /// line counts as finished, and a signal still begun and not ended is
    /// malformed. Returns the signals that completes.
    pub fn end(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&clean(&line), &mut out);
        }
        let carried = std::mem::take(&mut self.carry);
        if carried.starts_with(PREFIX) {
            out.push(malformed(&carried));
        }
        out
    }
}

/// A line as text, without carriage returns (borrowed when it can be).
fn clean(line: &[u8]) -> std::borrow::Cow<'_, str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if memchr::memchr(b'\r', line).is_some() {
        return std::borrow::Cow::Owned(String::from_utf8_lossy(line).replace('\r', ""));
    }
    // Consoles are nearly always valid UTF-8: check that first, which is
    // cheaper than the lossy conversion's chunking.
    match std::str::from_utf8(line) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    }
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
            // One pass over the body; a key given twice keeps its last value.
            let (mut id, mut result, mut measurement, mut units) = (None, None, None, None);
            for w in body.split_ascii_whitespace() {
                let Some((k, v)) = w.split_once('=') else {
                    continue;
                };
                match k {
                    "TEST_CASE_ID" => id = Some(v),
                    "RESULT" => result = Some(v),
                    "MEASUREMENT" => measurement = Some(v),
                    "UNITS" => units = Some(v),
                    _ => {}
                }
            }
            Some(Signal::TestCase {
                id: id?.to_owned(),
                result: result?.to_ascii_lowercase(),
                measurement: measurement.map(str::to_owned),
                units: units.map(str::to_owned),
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
        // LAVA's form: exactly the case, its result and the URL.
        "TESTREFERENCE" => {
            let mut it = body.split_whitespace();
            let (id, result, reference) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() {
                return None;
            }
            Some(Signal::TestReference {
                id: id.to_owned(),
                result: result.to_ascii_lowercase(),
                reference: reference.to_owned(),
            })
        }
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
    r#"lava_test_reference() { _ltr_n="$1"; shift; _ltr_r=""; _ltr_u=""; while [ $# -gt 0 ]; do case "$1" in --result) _ltr_r="$2"; shift 2;; --reference) _ltr_u="$2"; shift 2;; *) shift;; esac; done; printf '<LAVA_SIGNAL_%s %s %s %s>\n' TESTREFERENCE "$_ltr_n" "${_ltr_r:-unknown}" "$_ltr_u"; }"#,
    r#"lava_test_case_attach() { echo "lava-test-case-attach: not supported by labd (LAVA's v2 dispatcher keeps no attachments); $2 is not attached to $1" >&2; return 1; }"#,
    r#"alias lava-test-case=lava_test_case lava-test-set=lava_test_set lava-test-raise=lava_test_raise lava-test-reference=lava_test_reference lava-test-case-attach=lava_test_case_attach"#,
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

    /// LAVA's `lava-signal: kmsg`: the kernel prints the signal on the
    /// console after its timestamp.
    #[test]
    fn a_signal_the_kernel_prints_is_read() {
        let mut p = SignalParser::new();
        assert_eq!(
            p.feed(b"[   12.345678] <LAVA_SIGNAL_TESTCASE TEST_CASE_ID=k RESULT=pass>\r\n"),
            vec![tc("k", "pass")]
        );
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
    fn a_test_reference_has_exactly_a_case_a_result_and_a_url() {
        let mut p = SignalParser::new();
        let s = p.feed(b"<LAVA_SIGNAL_TESTREFERENCE docs PASS https://x.org/a?b=1>\n<LAVA_SIGNAL_TESTREFERENCE docs pass>\n");
        assert_eq!(
            s[0],
            Signal::TestReference {
                id: "docs".into(),
                result: "pass".into(),
                reference: "https://x.org/a?b=1".into()
            }
        );
        // Missing its URL: not a reference, kept as a signal not acted on.
        assert!(matches!(s[1], Signal::Other { .. }), "{:?}", s[1]);
    }

    #[test]
    fn garbage_does_not_stick() {
        let mut p = SignalParser::new();
        let mut junk = b"<LAVA_SIGNAL_TESTCASE ".to_vec();
        junk.extend(std::iter::repeat_n(b'x', 10_000));
        junk.extend(b"\n\xff\xfe\x00<<>>\n");
        let s = p.feed(&junk);
        assert!(
            matches!(&s[..], [Signal::Malformed { text }] if text.len() == MALFORMED_SHOWN),
            "{s:?}"
        );
        assert_eq!(
            p.feed(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=z RESULT=skip>\n"),
            vec![tc("z", "skip")]
        );
    }

    /// A signal whose id holds a `<` was dropped without a word.
    #[test]
    fn malformed_signals_are_reported_not_dropped() {
        let mut p = SignalParser::new();
        let s = p.feed(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a<b RESULT=pass>\r\n<LAVA_SIGNAL_TESTCASE:x>\r\n<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=ok RESULT=pass>\r\n");
        assert_eq!(
            s,
            vec![
                Signal::Malformed {
                    text: "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=a".into()
                },
                Signal::Malformed {
                    text: "<LAVA_SIGNAL_TESTCASE:x>".into()
                },
                tc("ok", "pass"),
            ]
        );
        // Begun, never ended: reported when the stream ends.
        assert!(p.feed(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=cut").is_empty());
        assert_eq!(
            p.end(),
            vec![Signal::Malformed {
                text: "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=cut".into()
            }]
        );
        // An unfinished line with a whole signal is finished by the end.
        assert!(p
            .feed(b"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=last RESULT=fail>")
            .is_empty());
        assert_eq!(p.end(), vec![tc("last", "fail")]);
    }
}
