#!/usr/bin/env bash
# labd's console pipeline against pexpect (as LAVA sets it up), labgrid's
# SerialDriver and LAVA with its per-line logging, in one run, through the
# peer harness of ../shared/bench on the same logs.
#
#   benches/console.sh            (after ../shared/bench's setup; see BENCHMARKS.md)
#
# labd's side is `labd-bench console`: the signal parser and the runner's
# matcher exactly as a board runs them, fed by stdin (a pipe, or the slave
# of a raw pty like a serial tty); `--store` also writes every byte through
# labd's store writer into sled. Results: target/console-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/console-bench
BENCH=${BENCH:-/tmp/bench}
[ -d "$BENCH" ] || cp -r ../shared/bench "$BENCH"
cd "$BENCH"
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
mkdir -p data "$OUT"
[ -f data/console-20MB.log ] || python3 gen_console_log.py data/console-20MB.log --size 20 --seed 1 >/dev/null
[ -f data/console-1GB.log.json ] || python3 gen_console_log.py data/console-1GB.log --size 1000 --seed 7 >/dev/null
(cd "$ROOT" && cargo build --release --bin labd-bench --quiet)
PY=.venv/bin/python
J=$OUT/console.jsonl
rm -f "$J"
L="$ROOT/target/release/labd-bench console"
M="$PY pexpect_matcher.py"
B() { "$PY" console_bench.py --json-out "$J" "$@" 2>&1 | tail -1 || true; }
# The store is a directory, which the harness does not clean up itself.
S() { B --keep-tmp --tmpdir "$OUT/tmp" "$@"; rm -rf "$OUT/tmp"; mkdir -p "$OUT/tmp"; }
mkdir -p "$OUT/tmp"
B --label "labd pipe 1GB"          --feed pipe --logs data/console-1GB.log  --matcher "$L"
B --label "labd pipe"              --feed pipe --logs data/console-20MB.log --matcher "$L"
B --label "labd pty"               --feed pty  --logs data/console-20MB.log --matcher "$L"
S --label "labd pipe +store 1GB"   --feed pipe --logs data/console-1GB.log  --matcher "$L --store {tmp}/store"
S --label "labd pty +store"        --feed pty  --logs data/console-20MB.log --matcher "$L --store {tmp}/store"
B --label "ceiling read+discard pty" --feed pty --logs data/console-20MB.log --matcher "$PY plain_re_matcher.py --sink"
B --label "fdpexpect pipe LAVA"    --feed pipe --logs data/console-20MB.log --matcher "$M --fd 0"
B --label "fdpexpect pty LAVA"     --feed pty  --logs data/console-20MB.log --matcher "$M --fd 0"
B --label "labgrid SerialDriver pty" --feed pty --logs data/console-20MB.log --matcher "$M --labgrid"
B --label "pexpect.spawn(cat) LAVA +yaml log" --feed none --logs data/console-20MB.log --matcher "$M --spawn-cat {log} --log yaml --log-path {tmp}/job-{i}.yaml"
python3 summarize.py "$OUT" > "$OUT/SUMMARY.md" 2>/dev/null || true
echo "results in $OUT"
