#!/usr/bin/python3
"""One side of benches/worker-vs-lava.sh: a job submitted N times to the
local lava-server (hil/lava-server), one after another, and what each costs.

For each job it takes:
- submit -> Finished: from the REST submit to lava-publisher's event that
  the job is Finished (the bench listens to the websocket; it never polls
  the server while a job runs, so the server's CPU is the job's and the
  worker's pings' alone);
- from the server's record, after the job: start_time, end_time, and the
  job's log span (the first and last log line's `dt`): the job's own time
  as its dispatcher logged it; `end lag` is end_time minus the last line;
- CPU-seconds from /proc during the job: gunicorn (its master and workers),
  PostgreSQL (the postmaster's tree, and its reaped backends: Django opens a
  connection per request), lava-scheduler and lava-publisher, and the
  worker side: `--side lava` lava-worker with its reaped children (lava-run,
  the power and console scripts; QEMU is detached and not counted) and
  atftpd; `--side labd` labd itself (its TFTP server is in process; QEMU is
  its child and not counted);
- memory: `lava` the peak RSS of lava-run (VmHWM sampled every 0.1 s),
  `labd` the daemon's peak RSS (VmHWM) after the job.

usage: lava_loop.py --side labd|lava --job FILE --runs N --token TOKEN
                    --worker-pid PID [--tftp-pid PID] --out FILE.jsonl
       lava_loop.py --summarize FILE.jsonl     (a Markdown table of medians)
Needs /usr/bin/python3 with aiohttp and yaml (lava-server's own).
"""
import argparse
import asyncio
import datetime
import json
import os
import statistics
import time
import urllib.request

import aiohttp
import yaml

API = "http://127.0.0.1:8000/api/v0.2"
WS = "http://127.0.0.1:8001/ws/"
HZ = os.sysconf("SC_CLK_TCK")
RUN = "/run/labd-lava-server"


def stat(pid):
    """(comm, fields after comm) of /proc/PID/stat, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    r = s.rindex(")")
    return s[s.index("(") + 1 : r], s[r + 2 :].split()


def children():
    """ppid -> [pid] over all processes."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = stat(int(d))
            if st:
                kids.setdefault(int(st[1][1]), []).append(int(d))
    return kids


def cpu(pid, kids, reaped=True, tree=True, skip=("qemu-system-aar",)):
    """CPU-seconds of PID (and its live descendants with `tree`), with the
    reaped children's (cutime+cstime) of each with `reaped`; processes whose
    comm starts with a `skip` entry are left out, with their subtrees."""
    st = stat(pid)
    if st is None:
        return 0.0
    comm, f = st
    if comm.startswith(skip):
        return 0.0
    # Fields after comm: utime is the 12th (index 11), then stime,
    # cutime, cstime.
    total = (int(f[11]) + int(f[12])) / HZ
    if reaped:
        total += (int(f[13]) + int(f[14])) / HZ
    if tree:
        for c in kids.get(pid, []):
            total += cpu(c, kids, reaped, tree, skip)
    return total


def pidfile(path):
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def postmaster():
    for p in ("/var/lib/postgresql/15/main/postmaster.pid",):
        pid = pidfile(p)
        if pid:
            return pid
    raise SystemExit("no PostgreSQL postmaster.pid: is hil/lava-server started?")


def snapshot(args):
    kids = children()
    s = {
        "gunicorn": cpu(pidfile(f"{RUN}/gunicorn.pid"), kids),
        "postgresql": cpu(postmaster(), kids),
        "scheduler": cpu(pidfile(f"{RUN}/scheduler.pid"), kids),
        "publisher": cpu(pidfile(f"{RUN}/publisher.pid"), kids),
    }
    if args.side == "lava":
        s["worker"] = cpu(args.worker_pid, kids)
    else:
        # labd's own threads; its reaped children are QEMU's power-offs.
        s["worker"] = cpu(args.worker_pid, kids, reaped=False, tree=False)
    if args.tftp_pid:
        s["tftp"] = cpu(args.tftp_pid, kids)
    return s


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def lava_run_pids():
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"lava-run") for a in argv[:2]):
                out.append(int(d))
    return out


def rest(token, path, body=None):
    req = urllib.request.Request(
        API + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        data = r.read()
    try:
        return json.loads(data)
    except ValueError:
        return data.decode()


def ts(text):
    """A server time (ISO 8601, maybe with a zone) as seconds since the epoch."""
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


async def one(args, session, definition):
    peak = {"kib": 0}
    async with session.ws_connect(WS, heartbeat=30) as ws:
        before = snapshot(args)
        t0 = time.time()
        job = rest(args.token, "/jobs/", {"definition": definition})["job_ids"][0]

        async def watch_memory():
            while True:
                if args.side == "lava":
                    for p in lava_run_pids():
                        peak["kib"] = max(peak["kib"], hwm_kib(p))
                await asyncio.sleep(0.1)

        mem = asyncio.ensure_future(watch_memory())
        try:
            deadline = t0 + args.timeout
            while True:
                left = deadline - time.time()
                if left <= 0:
                    raise SystemExit(f"job {job} did not finish within {args.timeout} s")
                msg = await ws.receive(timeout=left)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise SystemExit("the publisher closed the websocket")
                    continue
                topic, _, _, _, data = json.loads(msg.data)
                data = json.loads(data)
                if topic.endswith(".testjob") and data.get("job") == job and data.get("state") == "Finished":
                    t1 = time.time()
                    break
        finally:
            mem.cancel()
        after = snapshot(args)
    if args.side == "labd":
        peak["kib"] = hwm_kib(args.worker_pid)
    rec = rest(args.token, f"/jobs/{job}/")
    lines = yaml.safe_load(rest(args.token, f"/jobs/{job}/logs/")) or []
    tests = rest(args.token, f"/jobs/{job}/tests/?limit=1000")["results"]
    first = ts(lines[0]["dt"]) if lines else None
    last = ts(lines[-1]["dt"]) if lines else None
    return {
        "side": args.side,
        "job": job,
        "health": rec["health"],
        "submit_to_finished_s": round(t1 - t0, 3),
        "queue_s": round(ts(rec["start_time"]) - ts(rec["submit_time"]), 3),
        "log_span_s": round(last - first, 3) if lines else None,
        "end_lag_s": round(ts(rec["end_time"]) - last, 3) if lines else None,
        "tests": len(tests),
        "passed": sum(1 for t in tests if t["result"] == "pass"),
        "cpu_s": {k: round(after[k] - before[k], 3) for k in before},
        "peak_rss_mib": round(peak["kib"] / 1024, 1),
    }


def summarize(path):
    """Medians (and ranges) of each side's jobs, as a Markdown table."""
    rows = [json.loads(l) for l in open(path) if l.strip()]
    sides = [s for s in ("labd", "lava") if any(r["side"] == s for r in rows)]

    def col(side, f):
        vals = [f(r) for r in rows if r["side"] == side]
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        return f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"

    def server(r):
        return r["cpu_s"]["gunicorn"] + r["cpu_s"]["postgresql"]

    measures = [
        ("jobs (Complete, tests passed/run)", None),
        ("submit -> Finished seen on the server, s", lambda r: r["submit_to_finished_s"]),
        ("submit -> start_time (queue), s", lambda r: r["queue_s"]),
        ("the job's log span (first to last line), s", lambda r: r["log_span_s"]),
        ("end lag: last log line -> end_time, s", lambda r: r["end_lag_s"]),
        ("server CPU per job (gunicorn + PostgreSQL), CPU-s", server),
        ("  gunicorn", lambda r: r["cpu_s"]["gunicorn"]),
        ("  PostgreSQL", lambda r: r["cpu_s"]["postgresql"]),
        ("  lava-scheduler + lava-publisher", lambda r: r["cpu_s"]["scheduler"] + r["cpu_s"]["publisher"]),
        ("worker CPU per job (labd / lava-worker + lava-run), CPU-s", lambda r: r["cpu_s"]["worker"]),
        ("TFTP server CPU per job (atftpd; labd's is in process), CPU-s", lambda r: r["cpu_s"].get("tftp")),
        ("peak RSS, MiB (labd: the daemon; lava: lava-run)", lambda r: r["peak_rss_mib"]),
    ]
    print("| per job, median (min-max) | " + " | ".join(sides) + " |")
    print("|---|" + "---|" * len(sides))
    for name, f in measures:
        if f is None:
            cells = []
            for s in sides:
                rs = [r for r in rows if r["side"] == s]
                ok = sum(1 for r in rs if r["health"] == "Complete")
                cells.append(f"{len(rs)} ({ok} Complete, {sum(r['passed'] for r in rs)}/{sum(r['tests'] for r in rs)})")
            print(f"| {name} | " + " | ".join(cells) + " |")
        else:
            print(f"| {name} | " + " | ".join(col(s, f) for s in sides) + " |")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize")
    ap.add_argument("--side", choices=["labd", "lava"])
    ap.add_argument("--job")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--token")
    ap.add_argument("--worker-pid", type=int)
    ap.add_argument("--tftp-pid", type=int)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if not (args.side and args.job and args.token and args.worker_pid and args.out):
        ap.error("--side, --job, --token, --worker-pid and --out are needed")
    with open(args.job) as f:
        definition = f.read()
    async with aiohttp.ClientSession() as session:
        with open(args.out, "a") as out:
            for i in range(args.runs):
                r = await one(args, session, definition)
                r["run"] = i + 1
                out.write(json.dumps(r) + "\n")
                out.flush()
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
