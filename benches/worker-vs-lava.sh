#!/usr/bin/env bash
# labd as a lava-server's worker against lava-worker + lava-run (Debian's
# 2023.01), side by side in one run: the same lava-server (hil/lava-server,
# with lava-publisher), the same QEMU + U-Boot virtual board, the same job
# (../shared/lava-peer's busybox smoke job; its device_type is the one each
# worker's device has) and the same kernel and initramfs (hil/setup's),
# submitted RUNS times to each side, one job at a time.
#
#   benches/worker-vs-lava.sh [RUNS]     (root; after hil/setup; default 5)
#
# LAVA's side: lava-worker (default 20 s ping, lava-publisher's events on)
# with lava-run, atftpd on 127.0.0.1:69 and ../shared/lava-peer's device
# (its power and console scripts). labd's side: a labd (release build)
# whose [lava] worker has the rig's arm64 board as its device, its own TFTP
# server on 127.0.0.1:69. benches/lava_loop.py submits each job over REST,
# waits for lava-publisher's Finished event (no polling while a job runs)
# and reads /proc and the server's records; it prints a table of medians.
# Results go to target/worker-vs-lava/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
OUT=$PWD/target/worker-vs-lava
CACHE=${HIL_CACHE:-$HOME/.cache/labd-hil}
PEER=/opt/lava-peer          # the peer's scripts expect this path
PY=/usr/bin/python3          # lava-server's python, with aiohttp and yaml
TYPES=/etc/lava-server/dispatcher-config/device-types
DEVICES=/etc/lava-server/dispatcher-config/devices
M="lava-server manage"
# Whether `lava-server manage ARGS...` lists an entry starting PATTERN (read
# whole first: with pipefail, grep -q closing the pipe early would fail it).
lists() {
    local pattern=$1 out
    shift
    out=$($M "$@")
    grep -q "$pattern" <<<"$out"
}

[ "$(id -u)" -eq 0 ] || { echo "run as root (TFTP on port 69, lava-server manage)" >&2; exit 1; }
[ -f "$CACHE/Image-arm64" ] || { echo "run hil/setup first" >&2; exit 1; }
rm -rf "$OUT"; mkdir -p "$OUT"

hil/lava-server setup > "$OUT/lava-server-setup.log" 2>&1 || { tail "$OUT/lava-server-setup.log"; exit 1; }
hil/lava-server start
if [ ! -d "$PEER" ]; then cp -r ../shared/lava-peer "$PEER"; fi
command -v atftpd >/dev/null || apt-get install -y -q --no-install-recommends atftpd
HIL="$(cd ../shared/hil && pwd)" HIL_TFTP=$CACHE "$PEER/bin/setup-dispatcher.sh" > "$OUT/lava-setup.log" 2>&1 || { tail "$OUT/lava-setup.log"; exit 1; }
cargo build --release --bins --quiet

# The server's side of both workers: an admin token for the REST API, the
# two device types, a worker and a device each, tagged so that each job
# reaches its own worker's device.
lists '^\* labd-bench$' users list || $M users add labd-bench --superuser --staff --passwd "$(head -c 12 /dev/urandom | base64)"
TOKEN=$($M tokens add --user labd-bench --description "benches/worker-vs-lava.sh")
install -o lavaserver -g lavaserver -m 644 "$PEER/lava/device-types/qemu-virt-uboot.jinja2" "$TYPES/"
install -o lavaserver -g lavaserver -m 644 device-types/lava/qemu-aarch64-uboot.jinja2 "$TYPES/"
for t in qemu-virt-uboot qemu-aarch64-uboot; do
    lists "^\* $t " device-types list || $M device-types add "$t"
done
worker_token() {   # NAME FILE: the worker's token, from a new worker or its details
    if lists "^\* $1 " workers list; then
        $M workers details "$1" | sed -n 's/^token *: *//p' > "$2"
    else
        $M workers add "$1" --description "benches/worker-vs-lava.sh" | sed -n 's/^Token: //p' > "$2"
    fi
    chmod 600 "$2"
    [ -s "$2" ] || { echo "no token for worker $1" >&2; exit 1; }
}
device() {   # NAME TYPE WORKER TAG DICTIONARY
    printf '%s\n' "$5" > "$DEVICES/$1.jinja2"
    chown lavaserver:lavaserver "$DEVICES/$1.jinja2"
    if ! lists "^\* $1 " devices list -a; then
        $M devices add --device-type "$2" --worker "$3" "$1" --tags "$4"
    fi
    $M devices update "$1" --health GOOD
}
worker_token bench-lava "$OUT/bench-lava.token"
worker_token bench-labd "$OUT/bench-labd.token"
mkdir -p /etc/lava-server/dispatcher.d/bench-lava
cp "$PEER/lava/dispatcher.yaml" /etc/lava-server/dispatcher.d/bench-lava/dispatcher.yaml
device bench-lava-01 qemu-virt-uboot bench-lava bench-lava "$(cat "$PEER/lava/devices/qemu-uboot-01.jinja2")"
device bench-labd-01 qemu-aarch64-uboot bench-labd bench-labd "{% extends 'qemu-aarch64-uboot.jinja2' %}"

# The same job for both, tagged for each side's device.
sed 's/^priority:/tags: [bench-lava]\npriority:/' "$PEER/jobs/uboot-tftp-ramdisk-busybox.yaml" > "$OUT/lava-job.yaml"
sed -e 's/^device_type: qemu-virt-uboot/device_type: qemu-aarch64-uboot/' \
    -e 's/^priority:/tags: [bench-labd]\npriority:/' "$PEER/jobs/uboot-tftp-ramdisk-busybox.yaml" > "$OUT/labd-job.yaml"
mkdir -p "$PEER/artifacts"; cp -u "$CACHE/Image-arm64" "$CACHE/initramfs-arm64.cpio.gz" "$PEER/artifacts/"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "$PEER/bin/services.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

online() {   # WORKER: waits until the server shows it Online
    local i
    for i in $(seq 300); do
        [[ $(curl -fsS -H "Authorization: Token $TOKEN" "http://127.0.0.1:8000/api/v0.2/workers/$1/") =~ \"state\":\ ?\"Online\" ]] && return 0
        sleep 0.2
    done
    echo "worker $1 did not come Online within 60 s" >&2; exit 1
}

echo "== lava-worker + lava-run: $RUNS jobs"
"$PEER/bin/services.sh" start          # atftpd on :69, the artifacts on :8765
mkdir -p "$OUT/lava-worker"
/usr/bin/lava-worker --name bench-lava --url http://127.0.0.1:8000/ --ws-url http://127.0.0.1:8001/ws/ \
    --token-file "$OUT/bench-lava.token" --worker-dir "$OUT/lava-worker" \
    --log-file "$OUT/lava-worker.log" --level INFO > "$OUT/lava-worker.out" 2>&1 &
WORKER=$!; PIDS+=("$WORKER")
online bench-lava
$PY benches/lava_loop.py --side lava --job "$OUT/lava-job.yaml" --runs "$RUNS" --token "$TOKEN" \
    --worker-pid "$WORKER" --tftp-pid "$(cat "$PEER/run/atftpd.pid")" --out "$OUT/runs.jsonl"
kill "$WORKER"; wait "$WORKER" 2>/dev/null || true
"$PEER/bin/services.sh" stop

echo "== labd: $RUNS jobs"
mkdir -p "$OUT/labd"
cat > "$OUT/labd/lab.toml" <<EOF
socket = "$OUT/labd/labd.sock"
state_dir = "$OUT/labd/state"
device_types_dir = "$PWD/device-types"

[tftp]
bind = "127.0.0.1:69"
server_ip = "127.0.0.1"
window_size_limit = 16

[deploy]
file_roots = []

[lava]
url = "http://127.0.0.1:8000/"
worker = "bench-labd"
token_file = "$OUT/bench-labd.token"
ws_url = "ws://127.0.0.1:8001/ws/"

[[boards]]
name = "arm64-01"
device_type = "qemu-aarch64-uboot"
lava_worker_device = "bench-labd-01"
console = { type = "pty", link = "$OUT/labd/arm64-01.console" }
power = { type = "qemu", argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-smp", "1", "-m", "1024", "-bios", "/usr/lib/u-boot/qemu_arm64/u-boot.bin", "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"] }
EOF
$PY -m http.server --bind 127.0.0.1 --directory "$PEER/artifacts" 8765 > "$OUT/http.log" 2>&1 &
PIDS+=("$!")
./target/release/labd --config "$OUT/labd/lab.toml" > "$OUT/labd.log" 2>&1 &
LABD=$!; PIDS+=("$LABD")
online bench-labd
$PY benches/lava_loop.py --side labd --job "$OUT/labd-job.yaml" --runs "$RUNS" --token "$TOKEN" \
    --worker-pid "$LABD" --out "$OUT/runs.jsonl"
kill "$LABD"; wait "$LABD" 2>/dev/null || true

echo "== per job, $RUNS each (target/worker-vs-lava/runs.jsonl)"
$PY benches/lava_loop.py --summarize "$OUT/runs.jsonl" | tee "$OUT/summary.md"
