//! The overlay's shell scripts: labd's helpers (the files of
//! `src/overlay/bin/`, labd's own POSIX-sh implementations of LAVA's
//! commands) and the generated run.sh, install.sh and `environment`, with
//! the quoting that keeps a job's text data.
//!
//! Every generated line is POSIX sh that busybox ash and dash run alike. A
//! value from a job or a definition (a parameter, an environment variable)
//! only ever appears single-quoted, with each `'` written `'\''`: inside
//! single quotes nothing is special, newlines included, so no value can end
//! the quoting or run anything. A NUL cannot be in a shell word at all and
//! is refused. Names are checked to be shell variable names before they
//! become the left side of an `export`.

use super::OverlayError;

/// The helpers, by name, without their `#!` line (the board's shell goes
/// there). `@LAVA_SH@` stands for that shell, quoted.
const HELPERS: &[(&str, &str)] = &[
    ("lava-test-runner", include_str!("bin/lava-test-runner")),
    ("lava-test-case", include_str!("bin/lava-test-case")),
    ("lava-test-set", include_str!("bin/lava-test-set")),
    ("lava-test-raise", include_str!("bin/lava-test-raise")),
    (
        "lava-test-reference",
        include_str!("bin/lava-test-reference"),
    ),
    ("lava-test-event", include_str!("bin/lava-test-event")),
    (
        "lava-test-case-attach",
        include_str!("bin/lava-test-case-attach"),
    ),
    (
        "lava-background-process-start",
        include_str!("bin/lava-background-process-start"),
    ),
    (
        "lava-background-process-stop",
        include_str!("bin/lava-background-process-stop"),
    ),
];

/// How every helper prints a signal (`@LAVA_SIGNAL_FN@` in its text): on
/// its output, or, under LAVA's `lava-signal: kmsg` (run.sh exports
/// `KMSG`), into the kernel's log at the emergency level, which the kernel
/// prints on the console whatever its log level, as LAVA's helpers do.
const SIGNAL_FN: &str = "lava_signal() {\n    if [ -n \"${KMSG:-}\" ]; then\n        printf '<0>%s\\n' \"$1\" > /dev/kmsg\n    else\n        printf '%s\\n' \"$1\"\n    fi\n}\n";

/// The helpers as they go into `bin/`, for a board whose shell is `shell`.
pub(super) fn helpers(shell: &str) -> Vec<(&'static str, String)> {
    let quoted = sh_quote(shell);
    HELPERS
        .iter()
        .map(|(name, body)| {
            (
                *name,
                format!(
                    "#!{shell}\n{}",
                    body.replace("@LAVA_SH@", &quoted)
                        .replace("@LAVA_SIGNAL_FN@\n", SIGNAL_FN)
                ),
            )
        })
        .collect()
}

/// `v` as one sh word that means exactly `v`.
pub(super) fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// Whether `s` can be a shell variable's name.
pub(super) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn no_nul(what: &'static str, v: &str) -> Result<(), OverlayError> {
    if v.contains('\0') {
        return Err(OverlayError::Invalid {
            what,
            value: v.replace('\0', "\\0"),
            why: "holds a NUL byte, which no shell script can",
        });
    }
    Ok(())
}

/// One `export NAME='value'` line.
fn export(name: &str, value: &str) -> String {
    format!("export {name}={}\n", sh_quote(value))
}

/// A definition's parameters: its defaults, then the job's, which win
/// because they are exported after them.
pub(super) struct Params<'a> {
    defaults: Vec<&'a (String, String)>,
    job: &'a [(String, String)],
}

impl<'a> Params<'a> {
    /// A default whose name is no variable name is left out with a
    /// warning (LAVA would write a line the shell fails on); a job's such
    /// parameter is an error, since the job parser admits none.
    pub(super) fn new(
        defaults: &'a [(String, String)],
        job: &'a [(String, String)],
        mut warn: impl FnMut(String),
    ) -> Result<Self, OverlayError> {
        let mut kept = Vec::new();
        for p in defaults {
            if !is_name(&p.0) {
                warn(format!(
                    "the definition's parameter `{}` is not a shell variable name; left out",
                    p.0
                ));
                continue;
            }
            no_nul("parameter value", &p.1)?;
            kept.push(p);
        }
        for (k, v) in job {
            check_var(["parameter name", "parameter value"], k, v)?;
        }
        Ok(Self {
            defaults: kept,
            job,
        })
    }

    /// The parameters' lines, in LAVA's sections.
    fn write(&self, out: &mut String) {
        out.push_str("###default parameters from test definition###\n");
        for (k, v) in &self.defaults {
            out.push_str(&export(k, v));
        }
        out.push_str("######\n###test parameters from job submission###\n");
        for (k, v) in self.job {
            out.push_str(&export(k, v));
        }
        out.push_str("######\n");
    }
}

/// LAVA passes a `--shell` or `--cmd` step's `$1`, `$2`... to the helper
/// rather than expanding run.sh's own (empty) arguments: `$` and digits
/// followed by a non-word character or the end get a backslash.
fn escape_positional(step: &str) -> String {
    if !step.contains("--shell") && !step.contains("--cmd") {
        return step.to_owned();
    }
    let b = step.as_bytes();
    let mut out = String::with_capacity(step.len() + 4);
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let digits_end = b[i + 1..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map_or(b.len(), |p| i + 1 + p);
            let word_follows = b
                .get(digits_end)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
            if digits_end > i + 1 && !word_follows {
                out.push_str(&step[last..i]);
                out.push('\\');
                last = i;
            }
            i = digits_end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.push_str(&step[last..]);
    out
}

/// The line that puts a generated script in its own directory, wherever
/// the tree was unpacked: the runner starts it by its full path.
const CD_HERE: &str = "case $0 in */*) cd \"${0%/*}\" ;; esac\n";

/// A definition's run.sh.
pub(super) fn run_sh(
    shell: &str,
    testrun_id: &str,
    params: &Params<'_>,
    steps: &[String],
    kmsg: bool,
) -> Result<String, OverlayError> {
    let mut s = format!(
        "#!{shell}\n# The run.sh of {testrun_id}, written by labd: its parameters, then its\n\
         # steps between its STARTRUN and ENDRUN signals. lava-test-runner runs it\n\
         # with `sh -e`, as LAVA's does.\n"
    );
    params.write(&mut s);
    s.push_str("set -e\n");
    s.push_str(&format!("export TESTRUN_ID={testrun_id}\n"));
    s.push_str(CD_HERE);
    s.push_str("UUID=$(cat uuid)\n");
    // LAVA's `lava-signal: kmsg`: the helpers, and STARTRUN and ENDRUN
    // here, write to the kernel's log.
    let (to, level) = if kmsg {
        s.push_str("export KMSG=true\n");
        (" > /dev/kmsg", "<0>")
    } else {
        ("", "")
    };
    s.push_str(&format!(
        "printf '{level}<LAVA_SIGNAL_STARTRUN %s %s>\\n' \"$TESTRUN_ID\" \"$UUID\"{to}\n"
    ));
    for step in steps {
        no_nul("step", step)?;
        s.push_str(&escape_positional(step));
        s.push('\n');
    }
    s.push_str(&format!(
        "printf '{level}<LAVA_SIGNAL_ENDRUN %s %s>\\n' \"$TESTRUN_ID\" \"$UUID\"{to}\n"
    ));
    Ok(s)
}

/// A definition's install.sh: its `install: steps`, run in its directory
/// before run.sh. As LAVA's, without `-e`: its status is its last step's.
pub(super) fn install_sh(
    shell: &str,
    testrun_id: &str,
    params: &Params<'_>,
    steps: &[String],
) -> Result<String, OverlayError> {
    let mut s = format!(
        "#!{shell}\n# The install.sh of {testrun_id}, written by labd: its `install: steps`.\n"
    );
    params.write(&mut s);
    s.push_str(CD_HERE);
    s.push_str("pwd\n");
    for step in steps {
        no_nul("install step", step)?;
        s.push_str(step);
        s.push('\n');
    }
    Ok(s)
}

/// The `environment` file lava-test-runner sources.
/// Refuses a variable labd would export whose name is not a shell name,
/// or whose value holds a NUL; `kind` names them in the error.
fn check_var(kind: [&'static str; 2], name: &str, value: &str) -> Result<(), OverlayError> {
    if !is_name(name) {
        return Err(OverlayError::Invalid {
            what: kind[0],
            value: name.to_owned(),
            why: "is not a shell variable name",
        });
    }
    no_nul(kind[1], value)
}

pub(super) fn environment(
    job_id: crate::model::JobId,
    vars: &[(String, String)],
) -> Result<String, OverlayError> {
    let mut s =
        String::from("# The job's environment, written by labd; lava-test-runner sources it.\n");
    s.push_str(&export("LAVA_JOB_ID", &job_id.to_string()));
    for (k, v) in vars {
        check_var(["environment variable", "environment value"], k, v)?;
        s.push_str(&export(k, v));
    }
    Ok(s)
}

/// LAVA's `secrets` file: one `NAME='value'` line each, for a test shell
/// to source (LAVA writes the values bare; quoted, sourcing gives the same
/// variables, and a value can never be code).
pub fn secrets_file(
    secrets: &std::collections::BTreeMap<String, String>,
) -> Result<String, OverlayError> {
    let mut s = String::new();
    for (k, v) in secrets {
        check_var(["secret name", "secret value"], k, v)?;
        s.push_str(&format!("{k}={}\n", sh_quote(v)));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What `sh` makes of `export X=<quoted>; printf %s "$X"`.
    /// (`tests/overlay.rs` runs the whole overlay under busybox sh too.)
    fn through_sh(value: &str) -> String {
        let script = format!("{}printf %s \"$X\"", export("X", value));
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn hostile_values_stay_data() {
        let canary = tempfile::tempdir().unwrap();
        let flag = canary.path().join("ran");
        let f = flag.display();
        let values = [
            String::new(),
            "plain".into(),
            "it's".into(),
            "'".into(),
            "''".into(),
            "\\'".into(),
            format!("$(touch {f})"),
            format!("`touch {f}`"),
            format!("'; touch {f}; '"),
            format!("a\nb'\n$(touch {f})\n"),
            "${HOME} $HOME $$ \\ \" * ? ~ # ; & | < >".into(),
            "\u{e9}t\u{e9} \t tab".into(),
        ];
        for v in &values {
            assert_eq!(&through_sh(v), v);
        }
        assert!(!flag.exists(), "a value ran as code");
        assert!(no_nul("x", "a\0b").is_err());
    }

    #[test]
    fn names() {
        for ok in ["A", "_", "a_1", "SKIP_INSTALL"] {
            assert!(is_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "$(x)", "é"] {
            assert!(!is_name(bad), "{bad}");
        }
        let job = [("BAD NAME".to_owned(), "v".to_owned())];
        assert!(Params::new(&[], &job, |_| {}).is_err());
        let defaults = [("BAD-NAME".to_owned(), "v".to_owned())];
        let mut warned = Vec::new();
        let p = Params::new(&defaults, &[], |w| warned.push(w)).unwrap();
        assert!(p.defaults.is_empty() && warned.len() == 1);
    }

    #[test]
    fn positional_parameters_reach_the_helper() {
        assert_eq!(
            escape_positional("lava-test-case x --shell echo $1 ${1} $12 $1a $"),
            "lava-test-case x --shell echo \\$1 ${1} \\$12 $1a $"
        );
        assert_eq!(escape_positional("echo $1"), "echo $1");
    }

    #[test]
    fn job_parameters_come_after_the_defaults() {
        let defaults = [("A".to_owned(), "default".to_owned())];
        let job = [("A".to_owned(), "job's".to_owned())];
        let p = Params::new(&defaults, &job, |_| {}).unwrap();
        let s = run_sh("/bin/sh", "0_x", &p, &["echo \"$A\"".into()], false).unwrap();
        let d = s.find("export A='default'").unwrap();
        let j = s.find("export A='job'\\''s'").unwrap();
        assert!(d < j, "{s}");
    }

    /// LAVA's `lava-signal: kmsg`: run.sh exports KMSG for the helpers and
    /// writes its own STARTRUN and ENDRUN to the kernel's log.
    #[test]
    fn kmsg_definitions_signal_through_the_kernel() {
        let p = Params::new(&[], &[], |_| {}).unwrap();
        let s = run_sh("/bin/sh", "0_x", &p, &["true".into()], true).unwrap();
        assert!(s.contains("export KMSG=true\n"), "{s}");
        assert!(
            s.contains(
                "printf '<0><LAVA_SIGNAL_STARTRUN %s %s>\\n' \"$TESTRUN_ID\" \"$UUID\" > /dev/kmsg"
            ),
            "{s}"
        );
        assert!(s.contains("<0><LAVA_SIGNAL_ENDRUN"), "{s}");
        let plain = run_sh("/bin/sh", "0_x", &p, &["true".into()], false).unwrap();
        assert!(
            !plain.contains("kmsg") && !plain.contains("KMSG"),
            "{plain}"
        );
        for (name, text) in helpers("/bin/sh") {
            assert!(!text.contains("@LAVA_SIGNAL_FN@"), "{name}");
        }
    }
}
