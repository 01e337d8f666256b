#!/usr/bin/env python3
"""Bounded load on a local `crunch serve`: N concurrent clients send a fixed number of requests
(job status, /v1/formats, /v1/estimate) while quantize jobs run one after another; reports
throughput, p50/p99 latency per endpoint, failures (anything but 2xx and the expected 429s) and
the server's resident memory before, after warm-up and at the end.

Loopback only, bounded in count and time, Python standard library only.

  scripts/load_serve.py --serve "crunch serve" --models DIR --model FILE.gguf
  scripts/load_serve.py --url http://127.0.0.1:8080 --model /abs/path.gguf [--pid PID]

With --serve the script starts the server itself on a free loopback port (scratch out folder and
registry), and stops it with SIGTERM at the end (checking it exits by itself).
"""

import argparse
import http.client
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Client:
    """One keep-alive connection."""

    def __init__(self, host, port, token):
        self.host, self.port, self.token = host, port, token
        self.conn = None

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


def rss_of(client, pid):
    if pid:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    status, body = client.request("GET", "/metrics")
    if status == 200:
        for line in body.decode().splitlines():
            if line.startswith("crunch_process_resident_memory_bytes "):
                return int(float(line.split()[1]))
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (loopback only)")
    ap.add_argument("--serve", help="command that starts the server, e.g. 'crunch serve'")
    ap.add_argument("--models", help="--models folder for --serve")
    ap.add_argument("--model", required=True, help="GGUF model inside the models folder")
    ap.add_argument("--pid", type=int, help="server pid, to read its RSS from /proc")
    ap.add_argument("--token", help="bearer token")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--type", default="Q4_K_M", help="quantize type of the background jobs")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()

    proc, scratch = None, None
    if a.serve:
        if not a.models:
            ap.error("--serve needs --models")
        scratch = tempfile.mkdtemp(prefix="crunch-load-")
        port = free_port()
        cmd = shlex.split(a.serve) + [
            "--listen", f"127.0.0.1:{port}", "--models", a.models, "--out", os.path.join(scratch, "out"),
            "--registry", os.path.join(scratch, "registry.db"),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(scratch, "server.log"), "w"))
        a.url, a.pid = f"http://127.0.0.1:{port}", proc.pid
    if not a.url:
        ap.error("give --url or --serve")
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    if not (host == "localhost" or host == "::1" or host.startswith("127.")):
        sys.exit(f"refusing to load {host}: loopback addresses only")

    probe = Client(host, port, a.token)
    deadline = time.time() + 60
    while True:
        try:
            if probe.request("GET", "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if time.time() > deadline or (proc and proc.poll() is not None):
            sys.exit("the server did not come up")
        time.sleep(0.2)

    rss_before = rss_of(probe, a.pid)
    model = os.path.abspath(a.model)
    estimate_body = json.dumps({"model": model, "type": "Q4_K_M"})
    stop = threading.Event()
    job_ids, job_states = [], {}

    def jobs_loop():
        # Quantize jobs back to back while the load runs (bounded: at most 50).
        c = Client(host, port, a.token)
        n = 0
        while not stop.is_set() and n < 50:
            body = json.dumps({"kind": "quantize", "model": model, "output": f"load/q-{n % 2}.gguf",
                               "type": a.type, "allow_requantize": True})
            status, data = c.request("POST", "/v1/jobs", body)
            if status == 202:
                jid = json.loads(data)["id"]
                job_ids.append(jid)
                n += 1
                # Each job is followed to its end, also after the load stopped, so the last
                # memory reading is of an idle server (bounded: 300 s per job).
                job_deadline = time.time() + 300
                while time.time() < job_deadline:
                    s, d = c.request("GET", f"/v1/jobs/{jid}")
                    st = json.loads(d)["state"] if s == 200 else "?"
                    if st not in ("queued", "running"):
                        job_states[jid] = st
                        break
                    time.sleep(0.2)
            else:
                time.sleep(0.5)

    jt = threading.Thread(target=jobs_loop, daemon=True)
    jt.start()
    while not job_ids and jt.is_alive():
        time.sleep(0.05)

    lock = threading.Lock()
    counter = {"next": 0}
    results = []  # (endpoint, status, seconds)
    errors = []
    warm_rss = {}
    t0 = time.time()

    def worker(seed):
        rnd = random.Random(seed)
        c = Client(host, port, a.token)
        while True:
            with lock:
                i = counter["next"]
                if i >= a.requests or time.time() - t0 > a.max_seconds:
                    return
                counter["next"] += 1
            kind = rnd.choice(["status", "formats", "estimate"])
            t = time.perf_counter()
            try:
                if kind == "status":
                    jid = job_ids[-1] if job_ids else 1
                    status, _ = c.request("GET", f"/v1/jobs/{jid}")
                elif kind == "formats":
                    status, _ = c.request("GET", "/v1/formats")
                else:
                    status, _ = c.request("POST", "/v1/estimate", estimate_body)
            except Exception as e:  # noqa: BLE001 - counted as a failure
                status = f"error: {e}"
            dt = time.perf_counter() - t
            with lock:
                results.append((kind, status, dt))
            if i == a.requests // 10:
                warm_rss["rss"] = rss_of(Client(host, port, a.token), a.pid)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.time() - t0
    stop.set()
    jt.join(timeout=320)
    rss_after = rss_of(probe, a.pid)

    ok = [r for r in results if isinstance(r[1], int) and 200 <= r[1] < 300]
    limited = [r for r in results if r[1] == 429]
    failed = [r for r in results if r not in ok and r not in limited]
    per = {}
    for kind in ("status", "formats", "estimate"):
        lat = [r[2] for r in results if r[0] == kind and r in ok]
        per[kind] = {"n": len(lat), "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3}
    all_lat = [r[2] for r in ok]
    report = {
        "clients": a.clients,
        "requests": len(results),
        "seconds": elapsed,
        "throughput_rps": len(results) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(all_lat, 0.5) * 1e3,
        "p99_ms": percentile(all_lat, 0.99) * 1e3,
        "per_endpoint": per,
        "ok": len(ok),
        "rate_limited_429": len(limited),
        "failed": len(failed),
        "failures": sorted({str(r[1]) for r in failed})[:10],
        "quantize_jobs": {"submitted": len(job_ids), "states": sorted(set(job_states.values()))},
        # before: idle, fresh; after_warmup: a tenth into the load (a job running); after: idle
        # again, every job ended.
        "rss_bytes": {"before": rss_before, "after_warmup": warm_rss.get("rss"), "after": rss_after},
    }
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)

    code = 0 if not failed else 1
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
            print(f"server stopped on SIGTERM with exit code {rc}", file=sys.stderr)
            if rc != 0:
                code = 1
        except subprocess.TimeoutExpired:
            proc.kill()
            print("server did not stop within 60 s of SIGTERM", file=sys.stderr)
            code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
