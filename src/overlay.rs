//! The LAVA overlay: the test definitions of a job, their files and LAVA's
//! helper commands, as a `/lava-<job id>/` tree the board unpacks.
//!
//! LAVA users' test definitions expect to run from files on the board: a
//! `from: git` definition's steps call the scripts of its repository
//! (`./automated/linux/smoke/smoke.sh`, `../../utils/send-to-lava.sh`), and
//! they call LAVA's helpers (`lava-test-case`, `lava-test-set`, ...) as
//! programs. So labd builds LAVA's layout:
//!
//! - `lava-<id>/bin/`: labd's own POSIX-sh helpers, written for busybox
//!   and dash: `lava-test-case`, `lava-test-set`, `lava-test-raise`,
//!   `lava-test-reference`, `lava-test-case-attach` (says it is not
//!   supported), `lava-background-process-start`/`-stop`, and
//!   `lava-test-runner`, which runs each definition's `run.sh` in its own
//!   `sh` with stdin from `/dev/null`, so a step that reads stdin cannot eat
//!   what follows;
//! - `lava-<id>/<stage>/lava-test-runner.conf`: the definitions of one test
//!   action, one directory a line (relative to the stage), in order;
//! - `lava-<id>/<stage>/tests/<n>_<name>/`: the definition's files (a
//!   repository's tree), `uuid`, and `run.sh`, which exports the
//!   parameters (the definition's defaults, then the job's), enters its
//!   directory and runs the steps as one script between the STARTRUN and
//!   ENDRUN signals.
//!
//! The tree is packed as a gzip'd newc cpio archive rooted at `lava-<id>/`,
//! which [`append_to_ramdisk`] puts after the job's ramdisk: the kernel
//! unpacks concatenated archives, so the user's ramdisk is never unpacked
//! or changed.
//!
//! Invariants: nothing is read from the lab host but the checkouts the
//! runner names (a symlink in one is packed as a symlink, never followed);
//! parameter values are single-quoted for the shell, so no value runs as
//! code; the tree is bounded by [`MAX_OVERLAY_BYTES`].

use std::io::Write;
use std::path::{Path, PathBuf};

/// The largest overlay built (files packed, before compression).
pub const MAX_OVERLAY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("overlay: the test definitions' files pass {MAX_OVERLAY_BYTES} bytes")]
    TooBig,
    #[error("overlay: {0}")]
    Io(#[from] std::io::Error),
}

/// One test definition as the overlay runs it.
#[derive(Debug, Clone)]
pub struct Definition {
    /// `<n>_<name>`, the suite its results go to.
    pub suite: String,
    /// The files it runs among (a repository's checkout); none for an
    /// inline definition.
    pub files: Option<PathBuf>,
    /// The steps, each a shell line.
    pub steps: Vec<String>,
    /// Exported in order: the definition's defaults, then the job's.
    pub params: Vec<(String, String)>,
    /// A unique id for the run, as LAVA's.
    pub uuid: String,
}

/// A file of the tree: a path under `lava-<id>/`, its mode and contents
/// (a symlink's contents are its target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

const DIR: u32 = 0o040755;
const FILE: u32 = 0o100644;
const EXEC: u32 = 0o100755;
const LINK: u32 = 0o120777;

/// The tree for a job: its stages (one per test action, each a list of
/// definitions).
pub fn build(job_id: u64, stages: &[Vec<Definition>]) -> Result<Vec<Entry>, OverlayError> {
    let root = format!("lava-{job_id}");
    let mut out = vec![dir(&root), dir(&format!("{root}/bin"))];
    for (name, text) in HELPERS {
        out.push(Entry {
            path: format!("{root}/bin/{name}"),
            mode: EXEC,
            data: text.as_bytes().to_vec(),
        });
    }
    let mut total: u64 = 0;
    for (stage, defs) in stages.iter().enumerate() {
        let sdir = format!("{root}/{stage}");
        out.push(dir(&sdir));
        out.push(dir(&format!("{sdir}/tests")));
        let mut conf = String::new();
        for d in defs {
            let ddir = format!("{sdir}/tests/{}", d.suite);
            out.push(dir(&ddir));
            if let Some(files) = &d.files {
                add_tree(files, &ddir, &mut out, &mut total)?;
            }
            out.push(Entry {
                path: format!("{ddir}/uuid"),
                mode: FILE,
                data: d.uuid.as_bytes().to_vec(),
            });
            out.push(Entry {
                path: format!("{ddir}/run.sh"),
                mode: EXEC,
                data: run_sh(d).into_bytes(),
            });
            conf.push_str(&format!("tests/{}\n", d.suite));
        }
        out.push(Entry {
            path: format!("{sdir}/lava-test-runner.conf"),
            mode: FILE,
            data: conf.into_bytes(),
        });
    }
    Ok(out)
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        mode: DIR,
        data: Vec::new(),
    }
}

/// Adds a checkout's files under `at`, symlinks as symlinks, `.git`
/// included only if the checkout has one (`history: true`).
fn add_tree(
    src: &Path,
    at: &str,
    out: &mut Vec<Entry>,
    total: &mut u64,
) -> Result<(), OverlayError> {
    let read = |p: &Path, e: std::io::Error| OverlayError::Read {
        path: p.display().to_string(),
        source: e,
    };
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| read(src, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(src, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let dest = format!("{at}/{name}");
        let meta = std::fs::symlink_metadata(&path).map_err(|e| read(&path, e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| read(&path, e))?;
            out.push(Entry {
                path: dest,
                mode: LINK,
                data: target.as_os_str().as_encoded_bytes().to_vec(),
            });
        } else if ft.is_dir() {
            out.push(dir(&dest));
            add_tree(&path, &dest, out, total)?;
        } else if ft.is_file() {
            *total += meta.len();
            if *total > MAX_OVERLAY_BYTES {
                return Err(OverlayError::TooBig);
            }
            use std::os::unix::fs::PermissionsExt;
            let exec = meta.permissions().mode() & 0o111 != 0;
            out.push(Entry {
                path: dest,
                mode: if exec { EXEC } else { FILE },
                data: std::fs::read(&path).map_err(|e| read(&path, e))?,
            });
        }
        // Sockets, FIFOs and devices have no place in a test's files.
    }
    Ok(())
}

/// Single-quotes a value for the shell: nothing in it is expanded or run.
pub fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// A definition's `run.sh`: its parameters, its directory, its steps as one
/// script between the STARTRUN and ENDRUN signals.
fn run_sh(d: &Definition) -> String {
    let mut s = String::from("#!/bin/sh\n# Written by labd for one test definition.\n");
    s.push_str("###default parameters from test definition, then from the job###\n");
    for (k, v) in &d.params {
        // Names were checked to be shell names when the job was parsed.
        s.push_str(&format!("{k}={}\nexport {k}\n", sh_quote(v)));
    }
    s.push_str("######\n");
    s.push_str(&format!("export TESTRUN_ID={}\n", sh_quote(&d.suite)));
    s.push_str("cd \"$(dirname \"$0\")\" || exit 1\n");
    s.push_str("UUID=$(cat uuid)\n");
    s.push_str("echo \"<LAVA_SIGNAL_STARTRUN $TESTRUN_ID $UUID>\"\n");
    for step in &d.steps {
        s.push_str(step);
        s.push('\n');
    }
    s.push_str("echo \"<LAVA_SIGNAL_ENDRUN $TESTRUN_ID $UUID>\"\n");
    s
}

/// LAVA's helper commands, labd's own POSIX-sh versions.
const HELPERS: &[(&str, &str)] = &[
    (
        "lava-test-runner",
        r#"#!/bin/sh
# Runs the definitions listed in <stage>/lava-test-runner.conf, in order.
# Each run.sh gets a shell of its own and no stdin, so that a step reading
# stdin cannot eat the steps after it.
stage=$(cd "$1" && pwd) || exit 1
root=$(cd "$(dirname "$0")/.." && pwd) || exit 1
PATH="$root/bin:$PATH"
export PATH
while read -r dir; do
    [ -n "$dir" ] || continue
    case "$dir" in /*) ;; *) dir="$stage/$dir" ;; esac
    sh "$dir/run.sh" < /dev/null
done < "$stage/lava-test-runner.conf"
"#,
    ),
    (
        "lava-test-case",
        r#"#!/bin/sh
# lava-test-case NAME --result R [--measurement M] [--units U]
# lava-test-case NAME --shell COMMAND...
name="$1"; shift
result=""; measurement=""; units=""
if [ "$1" = "--shell" ]; then
    shift
    "$@"
    if [ $? -eq 0 ]; then result=pass; else result=fail; fi
else
    while [ $# -gt 0 ]; do
        case "$1" in
            --result) result="$2"; shift 2 ;;
            --measurement) measurement="$2"; shift 2 ;;
            --units) units="$2"; shift 2 ;;
            *) shift ;;
        esac
    done
fi
printf '<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=%s RESULT=%s%s%s>\n' "$name" "${result:-unknown}" "${measurement:+ MEASUREMENT=$measurement}" "${units:+ UNITS=$units}"
"#,
    ),
    (
        "lava-test-set",
        r#"#!/bin/sh
# lava-test-set start NAME | lava-test-set stop
case "$1" in
    start) printf '<LAVA_SIGNAL_TESTSET START %s>\n' "$2" ;;
    stop) printf '<LAVA_SIGNAL_TESTSET STOP>\n' ;;
esac
"#,
    ),
    (
        "lava-test-raise",
        r#"#!/bin/sh
# lava-test-raise REASON: ends the job as the test's failure.
printf '<LAVA_SIGNAL_TESTRAISE %s>\n' "$*"
"#,
    ),
    (
        "lava-test-reference",
        r#"#!/bin/sh
# lava-test-reference NAME --result R --reference URL
name="$1"; shift
result=""; reference=""
while [ $# -gt 0 ]; do
    case "$1" in
        --result) result="$2"; shift 2 ;;
        --reference) reference="$2"; shift 2 ;;
        *) shift ;;
    esac
done
printf '<LAVA_SIGNAL_TESTREFERENCE %s %s %s>\n' "$name" "${result:-unknown}" "$reference"
"#,
    ),
    (
        "lava-test-case-attach",
        r#"#!/bin/sh
echo "lava-test-case-attach: not supported by labd (LAVA's v2 dispatcher keeps no attachments); $2 is not attached to $1" >&2
exit 0
"#,
    ),
    (
        "lava-background-process-start",
        r#"#!/bin/sh
# lava-background-process-start NAME --cmd "COMMAND"
name="$1"; shift
[ "$1" = "--cmd" ] && shift
dir="${TMPDIR:-/tmp}/lava-background"
mkdir -p "$dir"
sh -c "$1" > "$dir/$name.log" 2>&1 < /dev/null &
echo $! > "$dir/$name.pid"
"#,
    ),
    (
        "lava-background-process-stop",
        r#"#!/bin/sh
# lava-background-process-stop NAME: stops it and shows what it printed.
name="$1"
dir="${TMPDIR:-/tmp}/lava-background"
[ -f "$dir/$name.pid" ] && kill "$(cat "$dir/$name.pid")" 2>/dev/null
[ -f "$dir/$name.log" ] && cat "$dir/$name.log"
rm -f "$dir/$name.pid" "$dir/$name.log"
"#,
    ),
];

/// The tree as a newc cpio archive (the kernel's initramfs format).
pub fn cpio(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut put = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{nsize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            dmaj = 0,
            dmin = 0,
            rmaj = 0,
            rmin = 0,
            nsize = name.len() + 1,
            check = 0,
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    for e in entries {
        put(&mut out, &e.path, e.mode, &e.data);
    }
    put(&mut out, "TRAILER!!!", 0, &[]);
    out
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// The archive gzip'd, as the kernel unpacks it.
pub fn cpio_gz(entries: &[Entry]) -> Result<Vec<u8>, OverlayError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio(entries))?;
    Ok(gz.finish()?)
}

/// Writes `ramdisk` followed by the overlay to `dest`: the overlay starts
/// on a 4-byte boundary (the kernel skips the zero padding between
/// archives), and the user's archive is left as it is.
pub fn append_to_ramdisk(
    ramdisk: &Path,
    overlay_gz: &[u8],
    dest: &Path,
) -> Result<u64, OverlayError> {
    let mut data = std::fs::read(ramdisk).map_err(|e| OverlayError::Read {
        path: ramdisk.display().to_string(),
        source: e,
    })?;
    pad4(&mut data);
    data.extend_from_slice(overlay_gz);
    let tmp = dest.with_extension("overlay-tmp");
    std::fs::write(&tmp, &data)?;
    // A rename replaces the name only: a deployed ramdisk linked to the
    // artifact cache's blob keeps the blob whole.
    std::fs::rename(&tmp, dest)?;
    Ok(data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_quoted_so_nothing_in_them_runs() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
    }

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let a = cpio(&[Entry {
            path: "lava-1/x".into(),
            mode: FILE,
            data: b"hello".to_vec(),
        }]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let trailer = b"TRAILER!!!\0";
        assert!(a.windows(trailer.len()).any(|w| w == trailer));
        // The file's data starts on a 4-byte boundary after its name.
        let at = a.windows(5).position(|w| w == b"hello").unwrap();
        assert_eq!(at % 4, 0);
    }
}
