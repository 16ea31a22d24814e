#!/usr/bin/env bash
# The same `from: git` test job under labd and under the real LAVA
# dispatcher (lava-run 2023.01 from Debian), one after the other on the same
# QEMU + U-Boot virtual board with the same kernel and initramfs, and their
# results compared: the same test cases, results and measurements, or this
# script fails naming the difference.
#
#   benches/git-vs-lava.sh        (root; after hil/setup)
#
# The repository is the one labd-hil makes for the rig (Linaro's smoke
# definition with labd's stand-ins for its scripts), served to both as
# file://. labd runs hil/jobs/git-smoke-arm64.yaml; LAVA runs the same test
# action in ../shared/lava-peer's busybox job (its device type, prompts and
# artifacts). Results go to target/git-vs-lava/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$PWD/target/git-vs-lava
CACHE=${HIL_CACHE:-$HOME/.cache/labd-hil}
PEER=/opt/lava-peer          # the peer's scripts expect this path
rm -rf "$OUT"; mkdir -p "$OUT"

[ "$(id -u)" -eq 0 ] || { echo "run as root (TFTP on port 69)" >&2; exit 1; }
[ -f "$CACHE/Image-arm64" ] || { echo "run hil/setup first" >&2; exit 1; }

if [ ! -d "$PEER" ]; then cp -r ../shared/lava-peer "$PEER"; fi
command -v atftpd >/dev/null || apt-get install -y -q --no-install-recommends atftpd
HIL="$(cd ../shared/hil && pwd)" HIL_TFTP=$CACHE "$PEER/bin/setup-dispatcher.sh" > "$OUT/lava-setup.log" 2>&1 || { tail "$OUT/lava-setup.log"; exit 1; }

cargo build --bins --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

# LAVA 2023.01 predates `expected` (newer LAVA, and labd, record an
# expected case never reported as a fail): both run the job without it.
LABD_JOB=$OUT/labd-job.yaml
grep -v -e '^      expected:' -e 'vmstat=fail' hil/jobs/git-smoke-arm64.yaml > "$LABD_JOB"

echo "== labd"
"$TARGET/debug/labd-hil" --boards 1 --jobs "$LABD_JOB" --run-dir "$OUT/labd" | tee "$OUT/labd.txt"
REPO=$OUT/labd/repos/test-definitions.git

# LAVA's job: the peer's deploy and boot, and the rig job's test action with
# the repository's path filled in.
JOB=$OUT/lava-job.yaml
{
    sed -n '1,/^- test:/p' "$PEER/jobs/uboot-tftp-ramdisk-busybox.yaml" | sed '$d'
    sed -n '/^- test:/,$p' "$LABD_JOB" | sed "s|@REPOS@|$OUT/labd/repos|"
} > "$JOB"

# The peer's services serve its artifacts over HTTP and its TFTP root.
mkdir -p "$PEER/artifacts"; cp -u "$CACHE/Image-arm64" "$CACHE/initramfs-arm64.cpio.gz" "$PEER/artifacts/"
trap '"$PEER/bin/services.sh" stop >/dev/null 2>&1 || true' EXIT

echo "== lava-run"
"$PEER/bin/services.sh" start
"$PEER/bin/run-job.sh" "$JOB" 9001 > "$OUT/lava-run.txt" 2>&1 || true
cp -r "$PEER/out/job-9001" "$OUT/lava" 2>/dev/null || true

python3 - "$OUT" <<'PY'
import json, sys, yaml, os
out = sys.argv[1]
labd = json.load(open(os.path.join(out, "labd/results.json")))[0]["results"]
def num(m):
    return None if m is None else float(m)
mine = sorted((r["suite"], r["name"], r["result"], num(r.get("measurement")), r.get("units")) for r in labd)
# lava-run logs one YAML mapping a line; its results are `lvl: results`
# (the `lava` suite is its own bookkeeping, which labd does not keep).
theirs = []
for line in open(os.path.join(out, "lava-run.txt"), errors="replace"):
    try:
        d = yaml.safe_load(line)
    except yaml.YAMLError:
        continue
    if isinstance(d, list) and d:
        d = d[0]
    if isinstance(d, dict) and d.get("lvl") == "results":
        m = d.get("msg") or {}
        if isinstance(m, dict) and m.get("definition") != "lava":
            meas = m.get("measurement")
            theirs.append((m["definition"], m["case"], m["result"], num(meas), m.get("units")))
theirs = sorted(theirs)
print("labd:", mine)
print("lava:", theirs)
if mine != theirs:
    print("DIFFERENT", file=sys.stderr)
    sys.exit(1)
print("the same test cases, results, measurements and units")
PY
