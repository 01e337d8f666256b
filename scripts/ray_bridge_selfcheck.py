"""End-to-end check of crates/crunch/src/search/ray_bridge.py on a local Ray cluster.

Run it with the Ray virtualenv's Python (scripts/ray-bridge-selfcheck.sh does): it starts a cluster
with scripts/ray-cluster.sh (head with 0 CPUs + 2 workers x 1 CPU) in its own state directory, runs
the bridge against it with stand-in commands instead of crunch, and stops the cluster at the end.

Checks: the protocol (only JSON events on stdout, exactly one result per trial, exit 0 on EOF),
failures (exit 3 -> failed after 1 attempt; missing program; timeout; invalid lines), two batches
of 6 trials running two at a time on both nodes, retries after SIGKILL of a trial's process, of its
Ray worker and of a whole worker node (raylet only, then the raylet with everything under it), no
orphaned trial processes, and a wrong address (error event, exit 2, bounded time). Prints timings
and memory use; exits 1 if any check failed.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIDGE = os.path.join(ROOT, "crates", "crunch", "src", "search", "ray_bridge.py")
CLUSTER = os.path.join(ROOT, "scripts", "ray-cluster.sh")
PY = sys.executable

STANDIN = r"""
import json, os, sys, time
tid, secs, marks = sys.argv[1], float(sys.argv[2]), sys.argv[3]
t0 = time.time()
open(os.path.join(marks, "%s.%d" % (tid, os.getpid())), "w").close()
time.sleep(secs)
print(json.dumps({"id": tid, "start": t0, "end": time.time(), "pid": os.getpid()}))
"""

FAILURES = []
NUMBERS = {}


def check(cond, what, detail=""):
    print("%s  %s%s" % ("PASS" if cond else "FAIL", what, ("  (%s)" % detail) if detail else ""), flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def note(key, value):
    NUMBERS[key] = round(value, 3) if isinstance(value, float) else value
    print("      %s = %s" % (key, NUMBERS[key]), flush=True)


class Bridge:
    """The bridge as the Rust driver runs it: NDJSON in, NDJSON out, stderr to a file."""

    KNOWN = {"connected", "result", "retry", "error"}

    def __init__(self, work, name, address, *extra):
        self.name = name
        self.stderr_path = os.path.join(work, name + ".stderr")
        self.t0 = time.time()
        self.proc = subprocess.Popen([PY, BRIDGE, "--address", address] + list(extra),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.stderr_path, "wb"))
        self.events = []  # (time, event)
        self.bad_lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            t = time.time()
            try:
                ev = json.loads(raw.decode("utf-8"))
                if not isinstance(ev, dict) or ev.get("event") not in self.KNOWN:
                    raise ValueError("not an event")
            except ValueError:
                self.bad_lines.append(raw)
                continue
            with self.cond:
                self.events.append((t, ev))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def send(self, obj):
        line = obj if isinstance(obj, str) else json.dumps(obj)
        self.proc.stdin.write((line + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def wait_for(self, pred, timeout):
        """The first (time, event) satisfying pred, or None after timeout."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, ev in self.events:
                    if pred(ev):
                        return t, ev
                left = deadline - time.time()
                if left <= 0 or (not self.reader.is_alive() and self.proc.poll() is not None):
                    return None
                self.cond.wait(min(left, 0.5))

    def connected(self, timeout=30):
        return self.wait_for(lambda e: e["event"] in ("connected", "error"), timeout)

    def result(self, tid, timeout):
        return self.wait_for(lambda e: e["event"] == "result" and e["id"] == tid, timeout)

    def results(self):
        return [(t, e) for t, e in self.events if e["event"] == "result"]

    def finish(self, timeout=30):
        """Closes stdin (EOF) and waits for the exit: (exit code or None, seconds after EOF)."""
        t = time.time()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        self.reader.join(5)
        return rc, time.time() - t

    def check_protocol(self, expected_ids):
        """Only JSON events on stdout; exactly one result line for each id sent."""
        check(not self.bad_lines, "%s: stdout holds only protocol events" % self.name,
              "%d stray line(s), first %r" % (len(self.bad_lines), self.bad_lines[:1]) if self.bad_lines else "")
        ids = [e["id"] for _, e in self.results()]
        check(sorted(ids, key=repr) == sorted(expected_ids, key=repr),
              "%s: exactly one result per trial" % self.name, "got %s" % sorted(ids, key=repr))


def standin(tid, secs, marks):
    return {"id": tid, "argv": [PY, os.path.join(os.path.dirname(marks), "standin.py"), str(tid), str(secs), marks]}


def wait_marks(marks, ids, timeout):
    """PIDs of the stand-in processes for these trial ids (first attempt), once all have started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = {}
        for name in os.listdir(marks):
            tid, pid = name.split(".")
            if int(tid) in ids and int(tid) not in found:
                found[int(tid)] = int(pid)
        if len(found) == len(ids):
            return found
        time.sleep(0.05)
    return None


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def ppid_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().split(")")[-1].split()[1])
    except OSError:
        return None


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def wait_gone(pid, timeout):
    t = time.time()
    while time.time() - t < timeout:
        if not alive(pid):
            return time.time() - t
        time.sleep(0.05)
    return None


def worker_of(pid, workers):
    """The worker node (entry of workers.json) whose raylet has pid among its ancestors."""
    by_pid = {w["raylet_pid"]: w for w in workers}
    while pid and pid > 1:
        if pid in by_pid:
            return by_pid[pid]
        pid = ppid_of(pid)
    return None


def max_overlap(intervals):
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def memory(state_dir, port, workers, standin_path):
    """RSS and PSS (MiB) of the cluster's processes: head (GCS, head raylet, dashboard, monitor, client
    server, agents) and each worker node (raylet, agents, Ray workers), trial processes apart."""
    children = {}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for p in pids:
        pp = ppid_of(p)
        if pp is not None:
            children.setdefault(pp, []).append(p)

    def tree(root):
        out, todo = [], [root]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def usage(p):
        rss = pss = 0
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss = int(line.split()[1])
        except OSError:
            pass
        return rss, pss

    gcs = re.compile(r":%d\b" % port)  # the Ray client server only names the GCS address
    roots = [p for p in pids if (state_dir in cmdline(p) or gcs.search(cmdline(p))) and "ray_bridge" not in cmdline(p)]
    seen, groups = set(), {}
    for w in workers:
        if alive(w["raylet_pid"]):
            groups[w["name"]] = [p for p in tree(w["raylet_pid"]) if p not in seen]
            seen.update(groups[w["name"]])
    head = []
    for r in roots:
        for p in tree(r):
            if p not in seen:
                head.append(p)
                seen.add(p)
    groups = {"head": head, **groups}
    out = {}
    for name, ps in groups.items():
        trial = [p for p in ps if standin_path in cmdline(p)]
        rest = [p for p in ps if p not in trial]
        rss = sum(usage(p)[0] for p in rest) / 1024
        pss = sum(usage(p)[1] for p in rest) / 1024
        workers_ = [p for p in rest if cmdline(p).startswith("ray::") and "Agent" not in cmdline(p)]
        out[name] = {"processes": len(rest), "rss_mib": round(rss), "pss_mib": round(pss),
                     "ray_workers": len(workers_), "ray_workers_rss_mib": round(sum(usage(p)[0] for p in workers_) / 1024)}
    return out


def cluster(state_dir, *args, timeout=120):
    env = dict(os.environ, RAY_STATE_DIR=state_dir)
    return subprocess.run([CLUSTER] + list(args), env=env, capture_output=True, text=True, timeout=timeout)


def other_ray_processes():
    mine = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            c = cmdline(int(p))
            if "/ray/core/src/ray/raylet/raylet" in c or "/ray/core/src/ray/gcs/gcs_server" in c:
                mine.append(int(p))
    return mine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-existing", action="store_true",
                    help="run even if Ray is already running on this host (`ray stop` at the end stops it too)")
    ap.add_argument("--trial-seconds", type=float, default=4.0, help="length of a stand-in trial (default 4)")
    args = ap.parse_args()
    T = args.trial_seconds

    if other_ray_processes() and not args.kill_existing:
        print("Ray is already running on this host; `ray stop` at the end would stop it. "
              "Stop it first or pass --kill-existing.", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="crs-", dir="/tmp")  # short: Ray's socket paths live under it
    state = os.path.join(work, "ray")
    marks = os.path.join(work, "marks")
    os.makedirs(marks)
    standin_path = os.path.join(work, "standin.py")
    with open(standin_path, "w") as f:
        f.write(STANDIN)
    t_all = time.time()
    print("selfcheck: work dir %s, load average %s" % (work, open("/proc/loadavg").read().split()[:3]), flush=True)

    t = time.time()
    r = cluster(state, "start", "--workers", "2", "--cpus-per-worker", "1")
    if not check(r.returncode == 0, "cluster starts", r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""):
        print(r.stderr, file=sys.stderr)
        cluster(state, "stop")
        return 1
    address = r.stdout.strip().splitlines()[-1]
    note("cluster_start_s", time.time() - t)
    check(address.startswith("127.0.0.1:"), "start prints 127.0.0.1:PORT", address)
    with open(os.path.join(state, "workers.json")) as f:
        workers = json.load(f)
    worker_ids = {w["node_id"] for w in workers}
    try:
        run_checks(work, state, marks, standin_path, address, workers, worker_ids, T)
    except Exception as e:  # a broken check must not leave the cluster running
        import traceback

        traceback.print_exc()
        check(False, "selfcheck ran to the end", repr(e))
    finally:
        t = time.time()
        r = cluster(state, "stop")
        note("cluster_stop_s", time.time() - t)
        check(r.returncode == 0, "cluster stops")
    note("selfcheck_total_s", time.time() - t_all)
    print("selfcheck numbers: %s" % json.dumps(NUMBERS, sort_keys=True))
    if FAILURES:
        print("selfcheck: %d check(s) FAILED: %s (bridge stderr in %s)" % (len(FAILURES), "; ".join(FAILURES), work))
        return 1
    print("selfcheck: all checks passed")
    return 0


def run_checks(work, state, marks, standin_path, address, workers, worker_ids, T):
    # 1. Connection, round trip of a trivial command, failures and malformed input.
    print("-- protocol, overhead and failures", flush=True)
    b = Bridge(work, "basics", address, "--unschedulable-timeout", "3")
    c = b.connected()
    if not check(c is not None and c[1]["event"] == "connected", "bridge connects", c and c[1]):
        return
    note("bridge_connect_s", c[0] - b.t0)
    ev = c[1]
    check(ev["cpus"] == 2 and len([n for n in ev["nodes"] if n["cpus"] > 0]) == 2,
          "connected event lists 2 workers with 2 CPUs", json.dumps(ev)[:200])
    lat = []
    for k in range(8):
        t = time.time()
        b.send({"id": 100 + k, "argv": ["true"]})
        r = b.result(100 + k, 30)
        lat.append((r[0] if r else float("inf")) - t)
        check(r is not None and r[1]["status"] == "ok" and r[1]["attempts"] == 1, "trivial trial %d ok" % k)
    note("roundtrip_cold_s", max(lat[:2]))
    note("roundtrip_warm_median_s", statistics.median(lat[2:]))
    b.send({"id": 200, "argv": ["sh", "-c", "echo boom >&2; exit 3"]})
    b.send({"id": 201, "argv": ["/nonexistent/crunch", "search"]})
    big = "\u00e9" * 200000 + "END"
    b.send({"id": 202, "argv": [PY, "-c", "import sys; sys.stdout.write('\\u00e9' * 200000 + 'END'); "
                                          "sys.stderr.write('x' * 100000 + 'TAIL')"]})
    b.send({"id": 207, "argv": ["echo", "x" * 200000]})  # one argument over Linux's 128 KiB limit
    b.send({"id": 208, "argv": ["true"], "num_cpus": 4})  # no node has 4 CPUs
    b.send({"id": 203, "argv": ["sh", "-c", "echo $CRUNCH_X; pwd"], "env": {"CRUNCH_X": "42"}, "cwd": "/"})
    b.send({"id": 204, "argv": ["sleep", "30"], "timeout": 1})
    b.send("this is not json")
    b.send({"id": 205, "argv": []})
    b.send({"id": 206, "argv": [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]})
    rc, after_eof = b.finish(60)
    check(rc == 0, "basics: exit 0 after EOF", "rc=%s" % rc)
    note("bridge_exit_after_eof_s", after_eof)
    b.check_protocol(list(range(100, 108)) + [200, 201, 202, 203, 204, None, 205, 206, 207, 208])
    res = {e["id"]: e for _, e in b.results()}
    e = res.get(200, {})
    check(e.get("status") == "failed" and e.get("exit_code") == 3 and e.get("attempts") == 1 and "boom" in e.get("stderr", ""),
          "exit 3 -> failed, attempts 1, stderr kept", json.dumps(e)[:200])
    e = res.get(201, {})
    check(e.get("status") == "failed" and e.get("exit_code") == 127 and e.get("attempts") == 1,
          "missing program -> failed (127), attempts 1", json.dumps(e)[:200])
    e = res.get(202, {})
    check(e.get("status") == "ok" and e.get("stdout") == big and len(e.get("stderr", "")) <= 8192
          and e.get("stderr", "").endswith("TAIL"), "400 KB UTF-8 stdout intact, stderr tail <= 8 KiB")
    e = res.get(207, {})
    check(e.get("status") == "failed" and e.get("attempts") == 1 and e.get("exit_code") is None
          and "cannot start" in (e.get("error") or ""), "program that cannot be started -> failed, no retry",
          (e.get("error") or "")[:100])
    e = res.get(208, {})
    check(e.get("status") == "failed" and "unschedulable" in (e.get("error") or "") and e.get("seconds", 99) < 12,
          "trial needing 4 CPUs -> failed after --unschedulable-timeout 3", (e.get("error") or "")[:100])
    e = res.get(203, {})
    check(e.get("stdout") == "42\n/\n", "env and cwd applied", repr(e.get("stdout")))
    e = res.get(204, {})
    check(e.get("status") == "failed" and "timed out" in (e.get("error") or "") and e.get("attempts") == 1
          and e.get("seconds", 99) < 10, "timeout -> failed, no retry", json.dumps(e)[:200])
    e = res.get(None, {})
    check(e.get("status") == "failed" and "invalid" in (e.get("error") or ""), "invalid JSON line -> failed result, id null")
    e = res.get(205, {})
    check(e.get("status") == "failed" and e.get("attempts") == 0, "invalid trial -> failed, attempts 0")
    e = res.get(206, {})
    retries = [ev for _, ev in b.events if ev["event"] == "retry" and ev["id"] == 206]
    check(e.get("status") == "failed" and e.get("attempts") == 3 and len(retries) == 2 and e.get("exit_code") is None
          and "signal 9" in (e.get("error") or ""),
          "process that always dies of SIGKILL -> 2 retries, then failed (attempts 3)", json.dumps(e)[:200])

    # 2. Six trials in two batches: two at a time, both nodes, ~3 x T.
    print("-- 6 trials in two batches on 2 x 1 CPU (trial %gs)" % T, flush=True)
    b = Bridge(work, "batches", address)
    check(b.connected() is not None, "batches: connected")
    t0 = time.time()
    for i in (1, 2, 3):
        b.send(standin(i, T, marks))
    b.wait_for(lambda e: e["event"] == "result", 3 * T + 30)
    for i in (4, 5, 6):
        b.send(standin(i, T, marks))
    time.sleep(T / 2)
    mem = memory(state, int(address.rsplit(":", 1)[1]), workers, standin_path)
    bridge_rss = 0
    with open("/proc/%d/status" % b.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                bridge_rss = int(line.split()[1]) // 1024
    rc, _ = b.finish(3 * T + 60)
    wall = max(t for t, _ in b.results()) - t0
    check(rc == 0, "batches: exit 0 after EOF", "rc=%s" % rc)
    b.check_protocol([1, 2, 3, 4, 5, 6])
    res = [e for _, e in b.results()]
    check(all(e["status"] == "ok" and e["attempts"] == 1 for e in res), "batches: all 6 ok at the first attempt")
    nodes = {e["node"] for e in res}
    check(nodes == worker_ids, "batches: trials ran on both worker nodes", "%d node(s)" % len(nodes))
    spans = [(json.loads(e["stdout"])["start"], json.loads(e["stdout"])["end"]) for e in res if e["status"] == "ok"]
    check(max_overlap(spans) == 2, "batches: exactly two trials at a time", "max overlap %d" % max_overlap(spans))
    note("batches_wall_s", wall)
    note("batches_ideal_s", 3 * T)
    check(3 * T - 0.5 <= wall <= 3 * T + 5, "batches: wall time ~ 3 x trial time", "%.2f s vs %.1f s" % (wall, 3 * T))
    note("memory_during_trials", mem)
    note("bridge_rss_mib", bridge_rss)

    # 3. SIGKILL of a trial's process, and of the Ray worker running a trial.
    print("-- SIGKILL of a trial's process and of a trial's Ray worker", flush=True)
    b = Bridge(work, "kills", address)
    check(b.connected() is not None, "kills: connected")
    b.send(standin(31, T, marks))
    b.send(standin(32, T, marks))
    pids = wait_marks(marks, {31, 32}, 30)
    if check(pids is not None, "kills: both trials started"):
        tk1 = time.time()
        os.kill(pids[31], 9)
        worker = ppid_of(pids[32])
        check(cmdline(worker).startswith("ray::"), "kills: the trial's parent is a Ray worker", cmdline(worker)[:60])
        tk2 = time.time()
        os.kill(worker, 9)
        gone = wait_gone(pids[32], 10)
        check(gone is not None, "kills: trial process dies with its Ray worker (no orphan)")
        note("orphan_gone_after_worker_kill_s", gone if gone is not None else -1.0)
        r1 = b.wait_for(lambda e: e["event"] == "retry" and e["id"] == 31, 30)
        r2 = b.wait_for(lambda e: e["event"] == "retry" and e["id"] == 32, 30)
        check(r1 is not None and "signal 9" in r1[1]["error"], "kills: SIGKILLed process -> retry event", r1 and r1[1]["error"][:80])
        check(r2 is not None and "WorkerCrashedError" in r2[1]["error"], "kills: killed Ray worker -> retry event",
              r2 and r2[1]["error"][:80])
        if r1:
            note("retry_after_process_kill_s", r1[0] - tk1)
        if r2:
            note("retry_after_worker_kill_s", r2[0] - tk2)
    rc, _ = b.finish(4 * T + 60)
    check(rc == 0, "kills: exit 0 after EOF", "rc=%s" % rc)
    b.check_protocol([31, 32])
    res = {e["id"]: e for _, e in b.results()}
    check(all(res.get(i, {}).get("status") == "ok" and res[i]["attempts"] == 2 for i in (31, 32)),
          "kills: both trials end ok with attempts 2", json.dumps([res.get(31, {}).get("attempts"), res.get(32, {}).get("attempts")]))

    # 4./5. A worker node dies mid-trial: raylet alone, then the raylet with everything under it.
    for n, (label, flags) in enumerate([("raylet SIGKILL", ["--raylet-only"]), ("whole node SIGKILL", [])]):
        if n == 1:
            t = time.time()
            r = cluster(state, "add-worker")
            check(r.returncode == 0, "add-worker replaces the dead node", r.stderr.strip()[-200:])
            note("add_worker_s", time.time() - t)
            with open(os.path.join(state, "workers.json")) as f:
                workers = json.load(f)
        live = [w for w in workers if alive(w["raylet_pid"])]
        print("-- node death: %s" % label, flush=True)
        b = Bridge(work, "node%d" % n, address)
        check(b.connected() is not None, "node%d: connected" % n)
        a, o = 41 + 10 * n, 42 + 10 * n
        b.send(standin(a, T + 2, marks))
        b.send(standin(o, T + 2, marks))
        pids = wait_marks(marks, {a, o}, 30)
        if not check(pids is not None, "node%d: both trials started" % n):
            b.finish(10)
            continue
        victim = worker_of(pids[a], live)
        other = worker_of(pids[o], live)
        check(victim is not None and other is not None and victim is not other,
              "node%d: the two trials run on different nodes" % n)
        dead_at = {}

        def watch(node_id=victim["node_id"]):
            from ray._raylet import GcsClient

            gcs = GcsClient(address=address)
            while time.time() - tk < 60:
                for nid, info in gcs.get_all_node_info(timeout=5).items():
                    if nid.hex() == node_id and info.state != 0:
                        dead_at["t"] = time.time()
                        return
                time.sleep(0.1)

        tk = time.time()
        r = cluster(state, "kill-worker", str(victim["index"]), *flags)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        check(r.returncode == 0, "node%d: kill-worker %d %s" % (n, victim["index"], " ".join(flags)), r.stderr.strip())
        gone = wait_gone(pids[a], 15)
        check(gone is not None, "node%d: the dead node's trial process is gone (no orphan)" % n)
        note("node%d_orphan_gone_s" % n, (time.time() - tk) if gone is not None else -1.0)
        rt = b.wait_for(lambda e: e["event"] == "retry" and e["id"] == a, 60)
        check(rt is not None, "node%d: retry event for the lost trial" % n, rt and rt[1]["error"][:100])
        if rt:
            note("node%d_kill_to_retry_s" % n, rt[0] - tk)
        watcher.join(60)
        if "t" in dead_at:
            note("node%d_kill_to_gcs_dead_s" % n, dead_at["t"] - tk)
        check("t" in dead_at, "node%d: GCS marks the node dead" % n)
        rc, _ = b.finish(4 * T + 60)
        check(rc == 0, "node%d: exit 0 after EOF" % n, "rc=%s" % rc)
        b.check_protocol([a, o])
        res = {e["id"]: e for _, e in b.results()}
        ea, eo = res.get(a, {}), res.get(o, {})
        check(ea.get("status") == "ok" and ea.get("attempts") == 2 and ea.get("node") == other["node_id"],
              "node%d: lost trial retried on the other node, ok, attempts 2" % n, json.dumps(ea)[:160])
        check(eo.get("status") == "ok" and eo.get("attempts") == 1, "node%d: the other trial ok, attempts 1" % n)
        note("node%d_lost_trial_seconds" % n, float(ea.get("seconds", -1)))

    # 6. Wrong addresses: nothing listening, and a port that accepts but never speaks Ray.
    print("-- wrong addresses", flush=True)
    for label, addr, extra, limit in [("refused", "127.0.0.1:1", [], 10)]:
        b = Bridge(work, "wrong-" + label, addr, *extra)
        c = b.connected(limit)
        rc, _ = b.finish(limit)
        el = time.time() - b.t0
        check(c is not None and c[1]["event"] == "error" and rc == 2, "wrong address (%s): error event, exit 2" % label,
              "rc=%s" % rc)
        note("wrong_address_%s_s" % label, el)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    addr = "127.0.0.1:%d" % silent.getsockname()[1]
    b = Bridge(work, "wrong-silent", addr, "--connect-timeout", "4")
    c = b.connected(20)
    rc, _ = b.finish(20)
    el = time.time() - b.t0
    silent.close()
    check(c is not None and c[1]["event"] == "error" and rc == 2 and el < 10,
          "silent non-Ray port with --connect-timeout 4: error event, exit 2", "rc=%s after %.1f s" % (rc, el))
    note("wrong_address_silent_s", el)


if __name__ == "__main__":
    sys.exit(main())
