//! LAVA's `interactive` tests: commands sent to a prompt that is not a
//! shell labd drives (a bootloader's, or any console's), their answers
//! matched against the script's successes and failures.
//!
//! It exists apart from the shell tests because nothing runs on the board
//! for it: each command is typed as it is, and what comes back after its
//! echo is matched as LAVA matches it. For each command, the prompts, then the failures,
//! then the successes are waited for together, and the first to appear
//! decides: a prompt is a pass unless successes were expected; a failure
//! is a fail, and ends the job with its `exception`'s class if it has one;
//! a success is a pass, and its named groups become placeholders for the
//! commands after it. A named command is a test case of the script's suite
//! (`<stage>_<script name>`, the stage counting the job's shell test
//! actions before it, as LAVA's); a command without a name that fails ends
//! the job (Test). Each script is also a test case of the `lava` suite.
//!
//! Invariants: a result is recorded for every named command that was sent,
//! even when its failure ends the job; an `expected` case never reported is
//! recorded as a fail, as LAVA does; every wait is bounded by the
//! connection timeout and the action's.

use super::{infra, Runner, Stop};
use crate::job::{Action, InteractiveCommand, InteractiveScript, InteractiveStep, Test};
use crate::model::{ErrorClass, JobOutcome, TestCase};
use std::collections::BTreeMap;

/// What one command came to.
struct Outcome {
    result: &'static str,
    /// An error that ends the job (a failure with an `exception`, or an
    /// unnamed command that failed).
    stop: Option<Stop>,
}

impl Runner {
    pub(super) async fn interactive(&mut self, index: usize, t: &Test) -> Result<(), Stop> {
        if !self.booted {
            return Err(Stop(JobOutcome::incomplete(
                ErrorClass::Job,
                "an interactive test needs a boot action before it",
            )));
        }
        self.phase(super::Phase::Testing);
        // LAVA's stage: the shell test actions before this one.
        let stage = self.ctx.def.actions[..index]
            .iter()
            .filter(|a| matches!(a, Action::Test(t) if !t.definitions.is_empty()))
            .count();
        let limit = self.timeout("lava-test-interactive", t.timeout);
        let scripts = t.interactive.clone();
        self.bounded("lava-test-interactive", limit, async |r: &mut Self| {
            // Nothing here is a shell's output: no signals are parsed, and
            // each wait is bounded by the connection timeout, as LAVA's.
            r.collecting = false;
            r.feeding = false;
            let mut found: BTreeMap<String, String> = BTreeMap::new();
            for script in &scripts {
                let suite = format!("{stage}_{}", script.name);
                r.event("interactive", &format!("{suite}: started"));
                let mut reported: BTreeMap<String, &'static str> = BTreeMap::new();
                let ran = r.script(&suite, script, &mut found, &mut reported).await;
                // As LAVA: the cases `expected` that never came, then the
                // script's own result in the `lava` suite.
                let mut cases = missing_expected(&suite, script.expected.as_deref(), &reported);
                cases.push(TestCase {
                    suite: "lava".into(),
                    set: None,
                    name: suite.clone(),
                    result: if ran.is_ok() { "pass" } else { "fail" }.into(),
                    measurement: None,
                    units: None,
                    reference: None,
                });
                r.record(cases).await?;
                ran?;
            }
            Ok(())
        })
        .await
    }

    /// Runs one script's steps; named commands' results are recorded as
    /// they end, and listed in `reported`.
    async fn script(
        &mut self,
        suite: &str,
        script: &InteractiveScript,
        found: &mut BTreeMap<String, String>,
        reported: &mut BTreeMap<String, &'static str>,
    ) -> Result<(), Stop> {
        for step in &script.steps {
            let c = match step {
                InteractiveStep::Delay(d) => {
                    self.event("interactive", &format!("delaying {:.1} s", d.as_secs_f64()));
                    tokio::time::sleep(*d).await;
                    continue;
                }
                InteractiveStep::Command(c) => c,
            };
            let command = match &c.command {
                Some(text) => Some(self.placeholders(text, found)?),
                None => None,
            };
            let out = self.command(script, c, command.as_deref(), found).await;
            // A wait that timed out or a closed console ends the job here;
            // LAVA still records the named command as a fail first.
            let (result, stop) = match out {
                Ok(o) => (o.result, o.stop),
                Err(stop) => ("fail", Some(stop)),
            };
            if let Some(name) = &c.name {
                let result = unexpected(script.expected.as_deref(), name, result);
                reported.insert(name.clone(), result);
                self.record(vec![TestCase {
                    suite: suite.to_owned(),
                    set: None,
                    name: name.clone(),
                    result: result.into(),
                    measurement: None,
                    units: None,
                    reference: None,
                }])
                .await?;
            } else if result == "fail" && stop.is_none() {
                let msg = format!(
                    "failed to run command '{}'",
                    command.as_deref().unwrap_or("")
                );
                self.event("error", &msg);
                return Err(Stop(JobOutcome::incomplete(ErrorClass::Test, msg)));
            }
            if let Some(stop) = stop {
                return Err(stop);
            }
        }
        Ok(())
    }

    /// Sends one command (or nothing) and matches what comes back.
    async fn command(
        &mut self,
        script: &InteractiveScript,
        c: &InteractiveCommand,
        command: Option<&str>,
        found: &mut BTreeMap<String, String>,
    ) -> Result<Outcome, Stop> {
        match command {
            None => self.event("interactive", "sending nothing, waiting"),
            Some(text) => {
                self.event("interactive-command", text);
                self.send(text).await;
                self.send("\n").await;
                // The answer comes after the command's echo: a prompt
                // already on the line (the bootloader interrupt's newline
                // prints a second one) or a success in the echo itself is
                // not the answer. `echo: discard` asks for the same.
                self.expect(&[regex::escape(text)], &[]).await?;
            }
        }
        let prompts = script.prompts.len();
        let failures = c.failures.len();
        let wanted: Vec<String> = script
            .prompts
            .iter()
            .cloned()
            .chain(c.failures.iter().map(|f| f.message.clone()))
            .chain(c.successes.iter().cloned())
            .collect();
        let (i, text) = self.expect_match(&wanted, &[]).await?;
        if i < prompts {
            if c.successes.is_empty() {
                return Ok(Outcome {
                    result: "pass",
                    stop: None,
                });
            }
            self.event(
                "interactive",
                &format!("matched a prompt, was expecting a success: {text}"),
            );
            return Ok(Outcome {
                result: "fail",
                stop: None,
            });
        }
        let mut stop = None;
        let result = if i < prompts + failures {
            let f = &c.failures[i - prompts];
            self.event("interactive", &format!("matched a failure: {text}"));
            if let Some(class) = f.exception {
                let msg = f.error.clone().unwrap_or_else(|| text.clone());
                self.event("error", &msg);
                stop = Some(Stop(JobOutcome::incomplete(class, msg)));
            }
            "fail"
        } else {
            let pattern = &c.successes[i - prompts - failures];
            // The named groups of a success become placeholders, as LAVA's.
            if let Ok(re) = regex::Regex::new(pattern) {
                if let Some(caps) = re.captures(&text) {
                    for name in re.capture_names().flatten() {
                        if let Some(v) = caps.name(name) {
                            found.insert(format!("{{{name}}}"), v.as_str().to_owned());
                        }
                    }
                }
            }
            self.event("interactive", &format!("matched a success: {text}"));
            "pass"
        };
        if stop.is_none() && c.wait_for_prompt {
            self.expect(&script.prompts, &[]).await?;
        }
        Ok(Outcome { result, stop })
    }

    /// A command with its placeholders filled: what earlier successes
    /// captured, `{JOB_ID}`, then the boot's (`{SERVER_IP}`, `{KERNEL}`, ...).
    fn placeholders(&self, text: &str, found: &BTreeMap<String, String>) -> Result<String, Stop> {
        let mut out = text.replace("{JOB_ID}", &self.ctx.job_id.to_string());
        for (k, v) in found {
            out = out.replace(k, v);
        }
        if out.contains('{') && self.ctx.dt.bootloader.is_some() {
            out = self.substitute(&out)?;
        } else if out.contains("{SERVER_IP}") {
            out = out.replace("{SERVER_IP}", &self.ctx.tftp.server_ip);
        }
        Ok(out)
    }

    /// Stores test cases now, in the order they came.
    pub(super) async fn record(&mut self, cases: Vec<TestCase>) -> Result<(), Stop> {
        if cases.is_empty() {
            return Ok(());
        }
        let cases = match &self.mask {
            Some(m) => cases
                .into_iter()
                .map(|c| TestCase {
                    suite: m.mask_str(&c.suite),
                    set: c.set.map(|s| m.mask_str(&s)),
                    name: m.mask_str(&c.name),
                    result: c.result,
                    measurement: c.measurement.map(|s| m.mask_str(&s)),
                    units: c.units.map(|s| m.mask_str(&s)),
                    reference: c.reference.map(|s| m.mask_str(&s)),
                })
                .collect(),
            None => cases,
        };
        self.ctx
            .store
            .add_results(self.ctx.job_id, cases)
            .await
            .map_err(|e| infra(e.to_string()))
    }
}

/// A result as a static string (the four LAVA knows, else `unknown`).
pub(super) fn result_str(r: &str) -> &'static str {
    match r {
        "pass" => "pass",
        "fail" => "fail",
        "skip" => "skip",
        _ => "unknown",
    }
}

/// LAVA's rule for a case not in `expected`: a result other than a fail is
/// forced to fail.
pub(super) fn unexpected(
    expected: Option<&[String]>,
    case: &str,
    result: &'static str,
) -> &'static str {
    match expected {
        Some(list) if !list.iter().any(|e| e == case) => "fail",
        _ => result,
    }
}

/// The `expected` cases a suite never reported, as fails.
pub(super) fn missing_expected(
    suite: &str,
    expected: Option<&[String]>,
    reported: &BTreeMap<String, &'static str>,
) -> Vec<TestCase> {
    let mut missing: Vec<&String> = expected
        .unwrap_or_default()
        .iter()
        .filter(|e| !reported.contains_key(*e))
        .collect();
    missing.sort();
    missing.dedup();
    missing
        .into_iter()
        .map(|name| TestCase {
            suite: suite.to_owned(),
            set: None,
            name: name.clone(),
            result: "fail".into(),
            measurement: None,
            units: None,
            reference: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_outside_expected_fail_and_missing_ones_are_reported_as_fails() {
        let expected = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(unexpected(Some(&expected), "a", "pass"), "pass");
        assert_eq!(unexpected(Some(&expected), "z", "pass"), "fail");
        assert_eq!(unexpected(Some(&expected), "z", "skip"), "fail");
        assert_eq!(unexpected(None, "z", "pass"), "pass");
        let mut reported = BTreeMap::new();
        reported.insert("b".to_owned(), "pass");
        let missing: Vec<String> = missing_expected("0_s", Some(&expected), &reported)
            .into_iter()
            .map(|c| format!("{} {} {}", c.suite, c.name, c.result))
            .collect();
        assert_eq!(missing, ["0_s a fail", "0_s c fail"]);
    }
}
