//! Minimal telnet (RFC 854) for consoles behind ser2net in telnet mode.
//!
//! labd only needs a clean byte stream: the filter takes the server's
//! option negotiation out of the data (no IAC byte ever reaches a job's
//! log), answers it (yes to binary transmission, echo and suppress-go-ahead,
//! no to anything else), skips subnegotiations, and turns `IAC IAC` back
//! into one 0xFF. Writing doubles 0xFF. It is a pure state machine, so a
//! sequence split across reads at any byte is handled.
//!
//! ## Invariants
//!
//! A pure state machine; no telnet command byte reaches the data, whatever
//! the split of the reads.

pub const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;
const BINARY: u8 = 0;
const ECHO: u8 = 1;
const SGA: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Data,
    Iac,
    Option(u8),
    Sub,
    SubIac,
}

/// Separates data from telnet commands in what the server sends.
#[derive(Debug, Default)]
pub struct Filter {
    state: State,
}

impl Filter {
    /// Feeds received bytes; returns the data and the replies to send back.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::with_capacity(input.len());
        let mut reply = Vec::new();
        for &b in input {
            self.state = match (self.state, b) {
                (State::Data, IAC) => State::Iac,
                (State::Data, b) => {
                    data.push(b);
                    State::Data
                }
                (State::Iac, IAC) => {
                    data.push(IAC);
                    State::Data
                }
                (State::Iac, DO | DONT | WILL | WONT) => State::Option(b),
                (State::Iac, SB) => State::Sub,
                // NOP, GA, AYT and the like carry no data.
                (State::Iac, _) => State::Data,
                (State::Option(verb), opt) => {
                    let answer = match verb {
                        DO if matches!(opt, BINARY | SGA) => Some(WILL),
                        DO => Some(WONT),
                        WILL if matches!(opt, BINARY | ECHO | SGA) => Some(DO),
                        WILL => Some(DONT),
                        // DONT and WONT need no answer from a client that
                        // never asked for anything.
                        _ => None,
                    };
                    if let Some(a) = answer {
                        reply.extend_from_slice(&[IAC, a, opt]);
                    }
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, _) => State::Sub,
                (State::SubIac, SE) => State::Data,
                (State::SubIac, _) => State::Sub,
            };
        }
        (data, reply)
    }
}

/// Escapes data for sending: 0xFF is doubled.
pub fn escape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_is_answered_and_never_reaches_the_data() {
        let input = [
            &b"U-Boot"[..],
            &[IAC, WILL, ECHO, IAC, DO, SGA, IAC, DO, 24],
            &[IAC, SB, 24, 1, IAC, IAC, 7, IAC, SE],
            &b" 2023 "[..],
            &[IAC, IAC, IAC, 241],
            &b"=> "[..],
        ]
        .concat();
        let mut whole = Filter::default();
        let (data, reply) = whole.feed(&input);
        // IAC IAC IAC NOP: an escaped 0xFF, then a NOP. One 0xFF is data.
        assert_eq!(data, b"U-Boot 2023 \xff=> ".to_vec(), "{data:?}");
        assert_eq!(reply, vec![IAC, DO, ECHO, IAC, WILL, SGA, IAC, WONT, 24]);
        // Every split gives the same.
        for at in 0..=input.len() {
            let mut f = Filter::default();
            let (mut d, mut r) = f.feed(&input[..at]);
            let (d2, r2) = f.feed(&input[at..]);
            d.extend(d2);
            r.extend(r2);
            assert_eq!((d, r), (data.clone(), reply.clone()), "split at {at}");
        }
    }

    #[test]
    fn escaping_round_trips_through_the_filter() {
        let raw = b"a\xffb\xff\xffc".to_vec();
        let (data, reply) = Filter::default().feed(&escape(&raw));
        assert_eq!(data, raw);
        assert!(reply.is_empty());
    }
}
