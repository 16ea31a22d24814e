//! LAVA's `monitors` tests: results read from the console of a board that
//! has no shell (a Zephyr board printing its tests as it boots).
//!
//! It exists apart from the shell tests because nothing is typed: for each
//! monitor labd waits for its `start`, then takes every match of its
//! `pattern` as a test case until its `end`. The end is looked for first
//! (LAVA's order), so a line that is both is the end. A case's id is the
//! `test_case_id` group, trimmed, lower-cased, each run of non-word
//! characters made `_`; its result is the `result` group through the
//! `fixupdict`, and must then be pass, fail, skip or unknown (anything else
//! is noted and left out); a match with a `measurement` and no `result` is
//! a pass with that measurement. The suite is the monitor's name, lower
//! case, spaces made `-`.
//!
//! Invariants: no console byte after the boot is missed (the waits share
//! the runner's matcher rest, as every wait does); waiting for `start` is
//! bounded by the connection timeout, the results by the action's timeout
//! only (a test may print nothing for long), and running out of it is the
//! test's failure.

use super::{Runner, Stop};
use crate::job::Test;
use crate::model::{ErrorClass, JobOutcome, TestCase};
use std::collections::BTreeMap;

impl Runner {
    pub(super) async fn monitors(&mut self, t: &Test) -> Result<(), Stop> {
        if !self.booted {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "a monitors test needs a boot action before it",
            )));
        }
        self.phase(super::Phase::Testing);
        let limit = self.timeout("lava-test-monitor", t.timeout);
        let monitors = t.monitors.clone();
        self.bounded("lava-test-monitor", limit, async |r: &mut Self| {
            r.feeding = false;
            for m in &monitors {
                let suite = m.name.replace(' ', "-").to_lowercase();
                let pattern = regex::Regex::new(&m.pattern).map_err(|e| {
                    Stop(JobOutcome::incomplete(
                        ErrorClass::Configuration,
                        format!("monitor {suite}: {e}"),
                    ))
                })?;
                r.event("monitor", &format!("{suite}: waiting for {:?}", m.start));
                r.collecting = false;
                r.expect(std::slice::from_ref(&m.start), &[]).await?;
                r.event("monitor", &format!("{suite}: started"));
                r.collecting = true;
                let mut reported: BTreeMap<String, &'static str> = BTreeMap::new();
                let wanted = [m.end.clone(), m.pattern.clone()];
                loop {
                    let (i, text) = r.expect_match(&wanted, &[]).await?;
                    if i == 0 {
                        r.event("monitor", &format!("{suite}: ended"));
                        break;
                    }
                    let Some(case) = monitor_case(&suite, &pattern, &m.fixupdict, &text) else {
                        r.event(
                            "monitor",
                            &format!("{suite}: not a valid result, ignored: {text}"),
                        );
                        continue;
                    };
                    let result = super::interactive::unexpected(
                        m.expected.as_deref(),
                        &case.name,
                        super::interactive::result_str(&case.result),
                    );
                    reported.insert(case.name.clone(), result);
                    r.record(vec![TestCase {
                        result: result.into(),
                        ..case
                    }])
                    .await?;
                }
                let missing =
                    super::interactive::missing_expected(&suite, m.expected.as_deref(), &reported);
                r.record(missing).await?;
            }
            Ok(())
        })
        .await
    }
}

/// The test case one match of a monitor's pattern reports, if it is one.
fn monitor_case(
    suite: &str,
    pattern: &regex::Regex,
    fixupdict: &BTreeMap<String, String>,
    text: &str,
) -> Option<TestCase> {
    static NON_WORD: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let caps = pattern.captures(text)?;
    let id = caps.name("test_case_id")?.as_str().trim().to_lowercase();
    // Invariant: the pattern is a constant that compiles.
    let non_word = NON_WORD.get_or_init(|| regex::Regex::new(r"\W+").expect("a valid regex"));
    let name = non_word.replace_all(&id, "_").into_owned();
    if name.is_empty() {
        return None;
    }
    let measurement = caps.name("measurement").map(|m| m.as_str().to_owned());
    let units = caps.name("units").map(|u| u.as_str().to_owned());
    let result = match caps.name("result") {
        Some(r) => {
            let r = r.as_str();
            let r = fixupdict.get(r).map(String::as_str).unwrap_or(r);
            if !matches!(r, "pass" | "fail" | "skip" | "unknown") {
                return None;
            }
            r.to_owned()
        }
        // A measurement alone is a pass, as LAVA's; it must be a number.
        None => {
            let m = measurement.as_deref()?;
            if m.is_empty() || m.trim().parse::<f64>().is_err() {
                return None;
            }
            "pass".to_owned()
        }
    };
    Some(TestCase {
        suite: suite.to_owned(),
        set: None,
        name,
        result,
        measurement,
        units,
        reference: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix() -> BTreeMap<String, String> {
        [("PASS", "pass"), ("FAIL", "fail")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    #[test]
    fn a_match_is_a_case_named_and_judged_as_lava_does() {
        let re = regex::Regex::new(r"(?P<result>(PASS|FAIL))\s-\s(?P<test_case_id>\w+)").unwrap();
        let c = monitor_case("test-aes128", &re, &fix(), "PASS - test_ecb_mode").unwrap();
        assert_eq!(
            (c.name.as_str(), c.result.as_str()),
            ("test_ecb_mode", "pass")
        );
        let c = monitor_case("s", &re, &fix(), "FAIL - Kernel_Obj").unwrap();
        assert_eq!((c.name.as_str(), c.result.as_str()), ("kernel_obj", "fail"));
        // Without a fixup, a result LAVA does not know is left out.
        assert!(monitor_case("s", &re, &BTreeMap::new(), "PASS - x").is_none());
    }

    #[test]
    fn a_measurement_alone_is_a_pass_and_ids_lose_their_punctuation() {
        let re = regex::Regex::new(r"(?P<test_case_id>.*) (?P<measurement>.*) tcs = [0-9]* nsec")
            .unwrap();
        let c = monitor_case("tests", &re, &fix(), "  Context Switch  120 tcs = 7 nsec").unwrap();
        assert_eq!(c.name, "context_switch");
        assert_eq!(c.result, "pass");
        assert_eq!(c.measurement.as_deref(), Some("120"));
        assert!(monitor_case("tests", &re, &fix(), "switch x tcs = 7 nsec").is_none());
    }
}
