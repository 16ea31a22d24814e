#!/usr/bin/env bash
# U-Boot's kernel load in the rig with RFC 7440 `tftpwindowsize 16` against
# lockstep (window 1), through labd's TFTP server, on the arm64 U-Boot board.
#
#   benches/tftp-window.sh [RUNS]        (root; after hil/setup; default 5 runs each)
#
# The same job (hil's arm64 smoke job) runs RUNS times with the device type
# as shipped (window 16) and RUNS times with a copy of it whose bootloader
# commands do not set `tftpwindowsize` (U-Boot's default, lockstep). The
# figures are U-Boot's own: the MiB/s it prints after each load, read from
# each job's console log, and labd's BL+TFTP phase. Results go to
# target/tftp-window/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
OUT=$PWD/target/tftp-window
rm -rf "$OUT"; mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "run as root (TFTP on port 69)" >&2; exit 1; }
cargo build --release --bins --quiet

JOB=hil/jobs/smoke-arm64.yaml
[ -f "$JOB" ] || { echo "no $JOB" >&2; exit 1; }
# The lockstep variant: the shipped device types with the window setting dropped.
mkdir -p "$OUT/lockstep-types"
cp device-types/*.yaml "$OUT/lockstep-types/"
sed -i 's/; setenv tftpwindowsize 16//' "$OUT/lockstep-types/qemu-aarch64-uboot.yaml"
if grep -q tftpwindowsize "$OUT/lockstep-types/qemu-aarch64-uboot.yaml"; then
    echo "could not drop tftpwindowsize from the copy" >&2; exit 1
fi

for variant in window16 lockstep; do
    types=$PWD/device-types
    [ "$variant" = lockstep ] && types=$OUT/lockstep-types
    echo "== $variant: $RUNS runs"
    ./target/release/labd-hil --boards 1 --jobs "$JOB" --repeat "$RUNS" \
        --device-types "$types" --run-dir "$OUT/$variant" | tee "$OUT/$variant.txt"
    # U-Boot's speed for each load, from the stored console logs.
    ./target/release/labd --config "$OUT/$variant/lab.toml" > "$OUT/$variant-labd.log" 2>&1 &
    LABD=$!
    # The socket file may be left from the run: wait until labd answers.
    for _ in $(seq 100); do
        ./target/release/labctl --socket "$OUT/$variant/labd.sock" boards > /dev/null 2>&1 && break
        sleep 0.1
    done
    for id in $(seq "$RUNS"); do
        ./target/release/labctl --socket "$OUT/$variant/labd.sock" logs "$id" \
            | tr -d '\r' | grep -E '^\s+[0-9.]+ [KM]iB/s' | awk -v v="$variant" -v j="$id" \
            '{ print v, "job", j, (NR == 1 ? "kernel" : "ramdisk"), $1, $2 }'
    done | tee "$OUT/$variant-speeds.txt"
    kill "$LABD"; wait "$LABD" 2>/dev/null || true
done
echo "results in $OUT"
