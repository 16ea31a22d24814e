//! The console matcher: waits for any of a set of regexes in a byte stream.
//!
//! It owns the search buffer for one wait. Unlike pexpect's search window it
//! never drops bytes it has not searched: every byte is searched, and only the
//! part before the last line break is discarded once no pattern matched there.
//! Patterns therefore match within one line (none of labd's prompts or
//! messages spans lines), however the stream was cut into reads.
//!
//! ## Invariants
//!
//! Every byte is searched; only bytes before the last line break that
//! matched nothing are dropped (patterns match within a line). A pattern
//! that is a plain string (an escaped command echo, most prompts and error
//! messages) is searched with `memmem` and never compiled as a regex; other
//! patterns are compiled once and shared process-wide (bounded). A matcher
//! always starts with nothing searched.

use regex::bytes::Regex;

/// The longest partial line kept between reads (a console that never sends a
/// line break, such as garbage at the wrong baud rate, cannot grow it further).
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("pattern `{pattern}` is not a valid regex: {source}")]
pub struct PatternError {
    pub pattern: String,
    #[source]
    pub source: regex::Error,
}

/// A successful match: which pattern, and the matched text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub index: usize,
    pub text: String,
}

/// One pattern, compiled the cheapest way that finds it.
#[derive(Debug, Clone)]
enum Pattern {
    /// A plain string: most prompts and error messages, and every echo of
    /// a command labd types (`regex::escape`d). Found with `memmem`, which
    /// searches as fast as the regex engine's literal prefilter and is
    /// built in well under a microsecond where a regex takes a tenth of a
    /// millisecond or more. An echo names the job's own files, so each job
    /// waits for patterns never seen before: compiling them as regexes was
    /// a fifteenth of a rig job's time on the actors' thread.
    Literal(Box<memchr::memmem::Finder<'static>>),
    /// Anything else, compiled once per distinct pattern (see [`shared`]).
    Regex(Regex),
}

impl Pattern {
    /// Plain text (the common case, and every echo) is read off the
    /// pattern at once; anything else is parsed and compiled once and
    /// shared (see [`shared`]).
    fn new(p: &str) -> Result<Pattern, PatternError> {
        match plain(p) {
            Some(text) => Ok(Pattern::literal(&text)),
            None => shared(p),
        }
    }

    fn literal(bytes: &[u8]) -> Pattern {
        Pattern::Literal(Box::new(memchr::memmem::Finder::new(bytes).into_owned()))
    }

    fn is_match(&self, hay: &[u8]) -> bool {
        match self {
            Pattern::Literal(f) => f.find(hay).is_some(),
            Pattern::Regex(r) => r.is_match(hay),
        }
    }

    /// The leftmost match's start and end.
    fn find(&self, hay: &[u8]) -> Option<(usize, usize)> {
        match self {
            Pattern::Literal(f) => f.find(hay).map(|at| (at, at + f.needle().len())),
            Pattern::Regex(r) => r.find(hay).map(|m| (m.start(), m.end())),
        }
    }
}

/// The text of a pattern that is plain text: no regex syntax but
/// backslashes before the characters `regex::escape` escapes. `None`
/// for anything else, which the regex parser must read, and for the empty
/// pattern (it matches everywhere, which the regex engine handles).
fn plain(p: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            // Only what `regex::escape` escapes: other escaped punctuation
            // may mean something (`\<` is the start of a word).
            '\\' => match chars.next() {
                Some(e) if regex_syntax::is_meta_character(e) => out.push(e as u8),
                _ => return None,
            },
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                return None
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The string `p` matches exactly, when the regex parser says it matches
/// only that string (such as `Linux\x20version`).
fn parsed_literal(p: &str) -> Option<Vec<u8>> {
    let hir = regex_syntax::Parser::new().parse(p).ok()?;
    match hir.kind() {
        regex_syntax::hir::HirKind::Literal(l) if !l.0.is_empty() => Some(l.0.to_vec()),
        _ => None,
    }
}

/// A pattern that is not plain text, parsed and compiled once and shared
/// with every later wait for it: jobs wait for the same prompts and
/// messages again and again.
fn shared(p: &str) -> Result<Pattern, PatternError> {
    /// Distinct patterns kept; beyond that the cache starts afresh (a
    /// lab's device types and jobs use far fewer).
    const KEPT: usize = 4096;
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Pattern>>,
    > = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // A poisoned lock still holds whole entries: each is inserted at once.
    if let Some(r) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(p) {
        return Ok(r.clone());
    }
    let made = match parsed_literal(p) {
        Some(text) => Pattern::literal(&text),
        None => Pattern::Regex(Regex::new(p).map_err(|source| PatternError {
            pattern: p.to_owned(),
            source,
        })?),
    };
    let mut kept = cache.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() >= KEPT {
        kept.clear();
    }
    kept.insert(p.to_owned(), made.clone());
    Ok(made)
}

#[derive(Debug, Clone)]
pub struct Matcher {
    /// Searched one by one: with the few patterns of a wait, as fast on a
    /// console's reads as one alternation of them all, and nothing to build
    /// per set of patterns.
    patterns: Vec<Pattern>,
    buf: Vec<u8>,
}

impl Matcher {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Matcher, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::new(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Matcher {
            patterns,
            buf: Vec::new(),
        })
    }

    fn is_match(&self, hay: &[u8]) -> bool {
        self.patterns.iter().any(|p| p.is_match(hay))
    }

    /// Keeps only what a later match could still need from `bytes`, read
    /// after an empty buffer: their unfinished line, bounded.
    fn keep_tail(&mut self, bytes: &[u8]) {
        let start = memchr::memrchr(b'\n', bytes).map_or(0, |nl| nl + 1);
        self.buf.extend_from_slice(&bytes[start..]);
        self.bound();
    }

    /// [`Matcher::keep_tail`] for bytes already in the buffer.
    fn trim_buf(&mut self) {
        if let Some(nl) = memchr::memrchr(b'\n', &self.buf) {
            self.buf.drain(..=nl);
        }
        self.bound();
    }

    /// A console that never sends a line break cannot grow the buffer
    /// beyond `MAX_LINE`.
    fn bound(&mut self) {
        if self.buf.len() > MAX_LINE {
            let cut = self.buf.len() - MAX_LINE;
            self.buf.drain(..cut);
        }
    }

    /// Feeds bytes. On a match, returns it and keeps the bytes after the
    /// match for the next wait (see [`Matcher::take_rest`]).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<Match> {
        if !self.buf.is_empty() {
            // Only the carried unfinished line can join with the new bytes
            // into a match, so only that line is finished in the buffer; the
            // rest is searched where it lies (copying every read whole into
            // the buffer was a tenth of the console pipeline).
            let cut = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |nl| nl + 1);
            self.buf.extend_from_slice(&bytes[..cut]);
            if let Some(m) = self.search_buf() {
                self.buf.extend_from_slice(&bytes[cut..]);
                return Some(m);
            }
            bytes = &bytes[cut..];
            if bytes.is_empty() {
                return None;
            }
            // The carried line ended at `cut` without a match, so
            // `search_buf` dropped it: nothing is carried any more.
            debug_assert!(self.buf.is_empty());
        }
        if !self.is_match(bytes) {
            self.keep_tail(bytes);
            return None;
        }
        self.buf.extend_from_slice(bytes);
        self.search_buf()
    }

    /// Searches the buffer. On a match, drops what it ends with; otherwise
    /// keeps only the unfinished line, bounded.
    fn search_buf(&mut self) -> Option<Match> {
        // Each pattern is searched once: with no alternation of them all,
        // a pass asking only whether any matches would search twice.
        let best = self
            .patterns
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.find(&self.buf).map(|(start, end)| (start, end, i)))
            .min_by_key(|&(start, _, i)| (start, i));
        match best {
            Some((start, end, index)) => {
                let text = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
                self.buf.drain(..end);
                Some(Match { index, text })
            }
            None => {
                self.trim_buf();
                None
            }
        }
    }

    /// How many bytes follow the last match (what [`Matcher::take_rest`]
    /// would return): after a match, always a suffix of the bytes fed last.
    pub fn rest_len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes after the last match, which the next wait must search first.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_position_matches() {
        let patterns = [
            "Hit any key to stop autoboot",
            "=> ",
            "login:",
            "root@sim:[^#]*# ",
        ];
        let texts: &[&[u8]] = &[
            b"U-Boot 2023.01\r\nHit any key to stop autoboot:  2 ",
            b"\r\n=> ",
            b"Debian GNU/Linux\r\nsim login:",
            b"\r\nroot@sim:/tmp/x# ",
        ];
        for (pi, t) in texts.iter().enumerate() {
            for i in 0..=t.len() {
                let mut m = Matcher::new(&patterns).unwrap();
                let first = m.feed(&t[..i]);
                let got = first.or_else(|| m.feed(&t[i..]));
                assert_eq!(got.map(|g| g.index), Some(pi), "text {pi} split at {i}");
            }
        }
    }

    /// With an unfinished line carried, a match in that line (joined with
    /// the new bytes) or in a later line of the same read is found, and
    /// everything after it is kept for the next wait.
    #[test]
    fn a_carried_line_and_the_lines_after_it_are_both_searched() {
        let mut m = Matcher::new(&["login:", "=> "]).unwrap();
        assert!(m.feed(b"boot\r\nsim lo").is_none());
        let got = m.feed(b"gin: rest\r\nmore");
        assert_eq!(got.map(|g| g.index), Some(0));
        assert_eq!(m.take_rest(), b" rest\r\nmore");

        let mut m = Matcher::new(&["login:", "=> "]).unwrap();
        assert!(m.feed(b"U-Boot 20").is_none());
        let got = m.feed(b"23.01\r\nHit any key\r\n=> tail");
        assert_eq!(got.map(|g| g.text), Some("=> ".to_owned()));
        assert_eq!(m.take_rest(), b"tail");

        // No match anywhere: only the new unfinished line is carried.
        let mut m = Matcher::new(&["login:"]).unwrap();
        assert!(m.feed(b"log").is_none());
        assert!(m.feed(b"out\r\nlog").is_none());
        assert_eq!(m.feed(b"in:").map(|g| g.index), Some(0));
    }

    /// However a console stream is cut into reads, the waits find what one
    /// search of the whole stream finds, in order (patterns within a line).
    #[test]
    fn any_cut_of_a_stream_matches_like_the_whole_stream() {
        let patterns = ["login:", "root@sim:[^#\n]*# ", "=> ", "Kernel panic"];
        let mut text = Vec::new();
        for i in 0..200 {
            text.extend_from_slice(
                match i % 7 {
                    0 => "U-Boot 2023.01\r\nHit any key\r\n=> ".to_owned(),
                    1 => format!("[ {i}.000] some kernel line {i}\r\n"),
                    2 => "sim login: root\r\n".to_owned(),
                    3 => format!("root@sim:/tmp/{i}# echo {i}\r\n{i}\r\n"),
                    4 => "a very long line without any prompt at all ".repeat(5),
                    5 => "\r\n".to_owned(),
                    _ => "Kernel pan".to_owned(),
                }
                .as_bytes(),
            );
        }
        // One search of the whole text: the leftmost match, then on from its end.
        let res: Vec<Regex> = patterns.iter().map(|p| Regex::new(p).unwrap()).collect();
        let mut want = Vec::new();
        let mut at = 0;
        while let Some((s, e, i)) = res
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.find_at(&text, at).map(|m| (m.start(), m.end(), i)))
            .min_by_key(|&(s, _, i)| (s, i))
        {
            want.push((i, String::from_utf8_lossy(&text[s..e]).into_owned()));
            at = e;
        }
        assert!(want.len() > 80, "{}", want.len());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut m = Matcher::new(&patterns).unwrap();
            let mut got = Vec::new();
            let mut rest = &text[..];
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = (1 + seed % 300) as usize;
                let (read, after) = rest.split_at(n.min(rest.len()));
                rest = after;
                let mut pending = m.feed(read);
                while let Some(g) = pending {
                    got.push((g.index, g.text));
                    let carried = m.take_rest();
                    pending = m.feed(&carried);
                }
            }
            assert_eq!(got, want);
        }
    }

    /// A matcher starts with nothing searched, whatever one built from the
    /// same (shared) patterns before it saw; a bad pattern is still an
    /// error, every time.
    #[test]
    fn matchers_of_shared_patterns_start_afresh() {
        let pats = ["root@[a-z]+:[^#]*# ", "TFTP error"];
        let mut first = Matcher::new(&pats).unwrap();
        assert!(first.feed(b"Loading: ###").is_none());
        let mut second = Matcher::new(&pats).unwrap();
        assert!(second.buf.is_empty());
        assert_eq!(
            second.feed(b"done\r\nroot@sim:~# ").map(|g| g.index),
            Some(0)
        );
        for _ in 0..2 {
            let e = Matcher::new(&["(unclosed"]).unwrap_err();
            assert_eq!(e.pattern, "(unclosed");
        }
    }

    /// Plain strings, however they are spelled as patterns, are found as
    /// strings; anything a regex says more than a string stays a regex.
    #[test]
    fn plain_strings_are_literals_and_the_rest_regexes() {
        let cmd = "tftp 0x40400000 1/0-kernel-Image (*.gz) $x [a]";
        for (p, want) in [
            (regex::escape(cmd), Some(cmd)),
            ("login:".to_owned(), Some("login:")),
            ("=> ".to_owned(), Some("=> ")),
            (r"Linux\x20version".to_owned(), Some("Linux version")),
            ("Linux version [0-9]".to_owned(), None),
            ("(?i)login".to_owned(), None),
            ("a|b".to_owned(), None),
            ("".to_owned(), None),
        ] {
            assert_eq!(
                parsed_literal(&p).map(|b| String::from_utf8(b).unwrap()),
                want.map(str::to_owned),
                "{p}"
            );
            // The quick reading never claims more than the parser: it
            // leaves escapes such as `\x20` to it.
            if let Some(text) = plain(&p) {
                assert_eq!(Some(text), parsed_literal(&p), "{p}");
            }
        }
        // Whatever text is escaped, the quick reading gives it back;
        // other escapes it leaves to the parser.
        for text in [cmd, "a\\b ~&#-<>@%!'\"`", "é ünïcode → ok"] {
            assert_eq!(plain(&regex::escape(text)), Some(text.as_bytes().to_vec()));
        }
        for p in [r"\<word", r"word\>", r"\d", r"\x41", r"\n"] {
            assert_eq!(plain(p), None, "{p}");
        }
        // The same matches either way.
        let mut m = Matcher::new(&[regex::escape(cmd), "Linux version [0-9]".to_owned()]).unwrap();
        let g = m
            .feed(format!("=> {cmd}\r\nLinux version 6").as_bytes())
            .unwrap();
        assert_eq!((g.index, g.text.as_str()), (0, cmd));
        let rest = m.take_rest();
        let g = m.feed(&rest).unwrap();
        assert_eq!((g.index, g.text.as_str()), (1, "Linux version 6"));
    }

    #[test]
    fn earliest_match_wins_and_rest_is_kept() {
        let mut m = Matcher::new(&["b", "a"]).unwrap();
        let g = m.feed(b"xxaxb").unwrap();
        assert_eq!(g.index, 1);
        assert_eq!(m.take_rest(), b"xb");
    }

    #[test]
    fn garbage_is_bounded() {
        let mut m = Matcher::new(&["never"]).unwrap();
        for _ in 0..100 {
            assert!(m.feed(&[0xffu8; 10_000]).is_none());
        }
        assert!(m.buf.len() <= MAX_LINE);
        assert!(m.feed(b"never").is_some());
    }
}
