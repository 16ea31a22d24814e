#!/usr/bin/env bash
# labd against the real LAVA dispatcher (lava-run 2023.01 from Debian), side
# by side in one run, on the same QEMU + U-Boot virtual board, with the same
# job (../shared/lava-peer's busybox smoke job, only its device_type renamed
# for labd) and the same kernel and initramfs (hil/setup's).
#
#   benches/hil-vs-lava.sh [RUNS]        (root; after hil/setup; default 10 runs)
#
# labd's side: `labd-hil --repeat RUNS` on one arm64 board, jobs one after
# another; labd's own CPU (user+sys, its TFTP server included) and peak RSS
# are read from /proc at the end, and each job's phases from labd.
# LAVA's side: ../shared/lava-peer's measure.py around `lava-run` (CPU of
# lava-run and its children except QEMU, peak RSS, milestones), with atftpd
# as its TFTP server. Results go to target/hil-vs-lava/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
OUT=$PWD/target/hil-vs-lava
CACHE=${HIL_CACHE:-$HOME/.cache/labd-hil}
PEER=/opt/lava-peer          # the peer's scripts expect this path
rm -rf "$OUT"; mkdir -p "$OUT"

[ "$(id -u)" -eq 0 ] || { echo "run as root (TFTP on port 69)" >&2; exit 1; }
[ -f "$CACHE/Image-arm64" ] || { echo "run hil/setup first" >&2; exit 1; }

# The peer: lava-dispatcher (no recommends), atftpd, and its device files.
if [ ! -d "$PEER" ]; then cp -r ../shared/lava-peer "$PEER"; fi
command -v atftpd >/dev/null || apt-get install -y -q --no-install-recommends atftpd
HIL="$(cd ../shared/hil && pwd)" HIL_TFTP=$CACHE "$PEER/bin/setup-dispatcher.sh" > "$OUT/lava-setup.log" 2>&1 || { tail "$OUT/lava-setup.log"; exit 1; }

cargo build --release --bins --quiet

# The same job for labd, with what must happen to it.
JOB=$OUT/labd-job.yaml
{
    echo "# expect-health: Complete"
    for c in uname kernel-cmdline proc-cpuinfo busybox-present memtotal-kb; do
        echo "# expect-result: 0_busybox-smoke/$c=pass"
    done
    sed 's/^device_type: qemu-virt-uboot/device_type: qemu-aarch64-uboot/' "$PEER/jobs/uboot-tftp-ramdisk-busybox.yaml"
} > "$JOB"

# Both fetch the artifacts from the same loopback HTTP server.
mkdir -p "$PEER/artifacts"; cp -u "$CACHE/Image-arm64" "$CACHE/initramfs-arm64.cpio.gz" "$PEER/artifacts/"
python3 -m http.server --bind 127.0.0.1 --directory "$PEER/artifacts" 8765 > "$OUT/http.log" 2>&1 &
HTTP=$!
trap 'kill $HTTP 2>/dev/null || true' EXIT
# python takes a moment to listen; there is nothing to wait on but the port.
for _ in $(seq 100); do
    curl -sf -o /dev/null -r 0-0 http://127.0.0.1:8765/Image-arm64 && break
    sleep 0.1
done

echo "== labd: $RUNS runs"
./target/release/labd-hil --boards 1 --jobs "$JOB" --repeat "$RUNS" --run-dir "$OUT/labd" \
    --artifacts http://127.0.0.1:8765 | tee "$OUT/labd.txt" || true
kill $HTTP; wait $HTTP 2>/dev/null || true; trap - EXIT

echo "== lava-run: $RUNS runs"
"$PEER/bin/services.sh" start
python3 "$PEER/bin/measure.py" -n "$RUNS" --tag sbs | tee "$OUT/lava.txt"
"$PEER/bin/services.sh" stop
cp "$PEER/results/sbs.jsonl" "$OUT/" 2>/dev/null || true
echo "results in $OUT"
