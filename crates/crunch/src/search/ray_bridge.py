"""Bridge between `crunch search` and a Ray cluster.

The Rust driver starts this script with the cluster's Python (same Python and Ray versions as the
cluster, e.g. $CRUNCH_CACHE/ray-venv/bin/python):

    python ray_bridge.py --address HOST:PORT [--max-retries N] [--num-cpus C] [--connect-timeout S]
                         [--unschedulable-timeout S] [--strategy SPREAD|DEFAULT]

HOST:PORT is the head's GCS and needs a node of the cluster on this host (run the search on the
head); from elsewhere use the Ray Client address ray://HEAD:10001. Protocol, NDJSON in UTF-8:

stdin, one trial per line (read on a thread, submitted as lines arrive; EOF = no more trials):
    {"id": 7, "argv": ["crunch", "..."], "env": {"K": "V"}, "cwd": "/dir" | null,
     "num_cpus": 1, "timeout": 600}
    env (added to the worker's environment), cwd (default: the worker node's working directory),
    num_cpus (default --num-cpus) and timeout (seconds of run time, default none) are optional.

stdout, one event per line, flushed after each, nothing else (Ray's output goes to stderr):
    {"event": "connected", "nodes": [{"node_id", "address", "name", "cpus"}...], "cpus": total}
    {"event": "retry", "id", "attempt" (number of the attempt about to start), "error", "node"}
    {"event": "result", "id", "status": "ok"|"failed", "exit_code": int|null, "stdout", "stderr"
     (last 8 KiB), "node" (node id of the final attempt; null if it never reported), "node_ip",
     "attempts", "seconds" (first submission to result, queueing and retries included),
     "run_seconds" (the final attempt's process, null if none ran), "error": str|null}
    {"event": "error", "error"}  -- could not connect; the process then exits with code 2.

Exit code 0 after EOF once every trial read has its result line; 2 when the connection fails or
times out; 1 when stdout is closed under us or on an internal error (after reporting every open
trial). A line that is not a valid trial gets a failed result at once (attempts 0; id null if it
has no integer id).

Retries are done by the bridge itself (Ray's max_retries=0), so "attempts" is exact: a trial is
resubmitted (--max-retries times, default 2) when its process was killed by a signal or Ray reports
a lost worker, node, owner or object. An exit code >= 1 fails at once, as do a timeout (exit_code
null), a program that cannot be started (exit_code 127, or null when the cwd or argv is unusable) and
a trial that no alive node has enough CPUs for during --unschedulable-timeout (default 60 s).
The trial's process is SIGKILLed when its Ray worker dies (PR_SET_PDEATHSIG), so nothing is left
running when a worker, a node or this bridge goes away.
"""

import argparse
import json
import os
import queue
import socket
import sys
import threading
import time

# Everything Ray (or anything else) prints must stay off the protocol stream: keep a private copy
# of the real stdout and point file descriptor 1 (and sys.stdout) at stderr before importing ray.
_PROTO = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
os.dup2(2, 1)
sys.stdout = sys.stderr
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_OUT_LOCK = threading.Lock()
STDERR_TAIL = 8192


def emit(obj):
    line = json.dumps(obj) + "\n"
    with _OUT_LOCK:
        try:
            _PROTO.write(line)
            _PROTO.flush()
        except (BrokenPipeError, OSError, ValueError):
            # The driver is gone: nobody can read results any more. Ray ends this job's tasks
            # (and their processes, see _LAUNCHER) once the driver disconnects.
            os._exit(1)


def log(msg):
    try:
        sys.stderr.write("ray_bridge: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


# Started on the worker in front of the trial's program: asks the kernel to SIGKILL the program
# when the Ray worker that started it dies (PR_SET_PDEATHSIG survives exec), so a lost worker or
# node never leaves an orphaned crunch process behind, then execs the program.
_LAUNCHER = r"""
import ctypes, os, sys
ppid = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != ppid:
    os._exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.stderr.write("ray_bridge: cannot execute %r: %s\n" % (sys.argv[2], e))
    os._exit(127)
"""


def run_trial(argv, env, cwd, timeout):
    """Runs on a Ray worker: one trial's process, its output and where it ran."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    import ray

    ctx = ray.get_runtime_context()
    info = {"node": ctx.get_node_id(), "node_ip": None, "pid": os.getpid()}
    try:
        info["node_ip"] = ray.util.get_node_ip_address()
    except Exception:
        pass
    full_env = dict(os.environ)
    full_env.update(env or {})
    t0 = time.time()
    timed_out = False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid())] + list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=full_env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,  # its own process group, so a timeout ends its children too
            )
        except OSError as e:
            info.update(returncode=None, stdout="", stderr="", run_seconds=0.0,
                        spawn_error="cannot start %r: %s" % (argv[0], e), timed_out=False)
            return info
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                proc.kill()
            rc = proc.wait()
        run_seconds = time.time() - t0
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        size = err.seek(0, 2)
        err.seek(max(0, size - STDERR_TAIL))
        stderr = err.read().decode("utf-8", "replace")
    info.update(returncode=rc, stdout=stdout, stderr=stderr, run_seconds=run_seconds,
                spawn_error=None, timed_out=timed_out)
    return info


class Trial:
    __slots__ = ("id", "argv", "env", "cwd", "num_cpus", "timeout", "attempts", "t0", "errors", "short_since")

    def __init__(self, tid, argv, env, cwd, num_cpus, timeout):
        self.id = tid
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.num_cpus = num_cpus
        self.timeout = timeout
        self.attempts = 0
        self.t0 = time.time()
        self.errors = []
        self.short_since = None  # since when no alive node has num_cpus CPUs


def parse_trial(line, default_cpus):
    """A Trial, or (id or None, error text) for a line that is not a valid trial."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        return None, "invalid JSON: %s" % e
    if not isinstance(obj, dict):
        return None, "trial line is not a JSON object"
    tid = obj.get("id")
    if not isinstance(tid, int) or isinstance(tid, bool):
        return None, "trial has no integer \"id\""
    argv = obj.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return tid, "\"argv\" must be a non-empty list of strings"
    env = obj.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return tid, "\"env\" must map strings to strings"
    cwd = obj.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        return tid, "\"cwd\" must be a string or null"
    num_cpus = obj.get("num_cpus", default_cpus)
    if num_cpus is None:
        num_cpus = default_cpus
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus < 0:
        return tid, "\"num_cpus\" must be a number >= 0"
    timeout = obj.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        return tid, "\"timeout\" must be a positive number of seconds or null"
    return Trial(tid, argv, env, cwd, num_cpus, timeout), None


def read_stdin(q):
    try:
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                q.put(("line", line))
    except Exception as e:  # a closed or broken stdin is the same as EOF
        log("reading stdin: %r" % (e,))
    q.put(("eof", None))


def check_reachable(address, timeout):
    """Fails fast (instead of Ray's long connect loop) when nothing listens at HOST:PORT."""
    if "://" in address or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("address must be HOST:PORT, got %r" % address)
    host = host.strip("[]")
    with socket.create_connection((host, int(port)), timeout=timeout):
        pass


def connect(args):
    """ray.init under a watchdog: error event and exit 2 on failure or after --connect-timeout."""
    done = threading.Event()

    def watchdog():
        if not done.wait(args.connect_timeout):
            emit({"event": "error",
                  "error": "timed out after %gs connecting to the Ray cluster at %s (is it a Ray GCS? A "
                           "HOST:PORT address also needs a node of the cluster on this host; else use "
                           "ray://HOST:CLIENT_PORT)" % (args.connect_timeout, args.address)})
            os._exit(2)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        check_reachable(args.address, min(5.0, args.connect_timeout))
        import logging

        import ray

        ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=True)
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            nodes.append({
                "node_id": n.get("NodeID"),
                "address": n.get("NodeManagerAddress"),
                "name": n.get("NodeName"),
                "cpus": n.get("Resources", {}).get("CPU", 0.0),
            })
    except BaseException as e:
        done.set()
        emit({"event": "error", "error": "cannot connect to the Ray cluster at %s: %s: %s"
              % (args.address, type(e).__name__, e)})
        os._exit(2)
    done.set()
    return ray, nodes


def main():
    ap = argparse.ArgumentParser(description="Runs crunch trials as Ray tasks (NDJSON on stdin/stdout).")
    ap.add_argument("--address", required=True, help="Ray cluster address, HOST:PORT of the head's GCS")
    ap.add_argument("--max-retries", type=int, default=2,
                    help="resubmissions after a lost worker/node or a signal death (default 2)")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per trial unless the trial says (default 1)")
    ap.add_argument("--connect-timeout", type=float, default=30.0, help="seconds allowed for connecting (default 30)")
    ap.add_argument("--strategy", default="SPREAD", choices=["SPREAD", "DEFAULT"],
                    help="Ray scheduling strategy for the trials (default SPREAD)")
    ap.add_argument("--unschedulable-timeout", type=float, default=60.0,
                    help="fail a waiting trial once no alive node has had its num_cpus for this many seconds "
                         "(e.g. every worker died; default 60)")
    args = ap.parse_args()

    ray, nodes = connect(args)
    import ray.exceptions as rex

    # Lost processes, workers, nodes and objects are retried; anything else is the trial's own fault.
    retryable = tuple(c for c in (
        getattr(rex, name, None) for name in (
            "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
            "OwnerDiedError", "RaySystemError", "OutOfMemoryError", "RpcError",
            "ObjectStoreFullError", "PlasmaObjectNotAvailable")) if c is not None)

    total_cpus = sum(n["cpus"] for n in nodes)
    emit({"event": "connected", "nodes": nodes, "cpus": total_cpus})
    if total_cpus < args.num_cpus:
        log("warning: the cluster has %g CPUs in all; trials needing %g will wait for nodes to join"
            % (total_cpus, args.num_cpus))

    remote = ray.remote(run_trial)
    base_options = {"max_retries": 0, "retry_exceptions": False, "scheduling_strategy": args.strategy}
    q = queue.Queue()
    threading.Thread(target=read_stdin, args=(q,), daemon=True).start()
    pending = {}  # ObjectRef -> Trial
    eof = False
    capacity = {"checked": time.time(), "largest": max([n["cpus"] for n in nodes] or [0.0])}

    def check_capacity():
        """Fails trials that no alive node can run, once that has lasted --unschedulable-timeout."""
        now = time.time()
        if now - capacity["checked"] < 2.0:
            return
        capacity["checked"] = now
        try:
            capacity["largest"] = max([n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
                                      or [0.0])
        except Exception as e:
            log("cannot list nodes: %r" % (e,))
            return
        for ref, trial in list(pending.items()):
            if trial.num_cpus <= capacity["largest"]:
                trial.short_since = None
                continue
            if trial.short_since is None:
                trial.short_since = now
                log("trial %s needs %g CPUs but the largest alive node has %g; failing it in %gs unless one joins"
                    % (trial.id, trial.num_cpus, capacity["largest"], args.unschedulable_timeout))
            elif now - trial.short_since >= args.unschedulable_timeout:
                del pending[ref]
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
                finish(trial, None, error="unschedulable: no alive node has %g CPUs (largest has %g) for %gs"
                       % (trial.num_cpus, capacity["largest"], args.unschedulable_timeout))

    def submit(trial):
        trial.attempts += 1
        try:
            ref = remote.options(num_cpus=trial.num_cpus, **base_options).remote(
                trial.argv, trial.env, trial.cwd, trial.timeout)
        except Exception as e:
            finish(trial, None, error="cannot submit: %s: %s" % (type(e).__name__, e))
            return
        pending[ref] = trial

    def finish(trial, info, error=None, exit_code=None, ok=False):
        info = info or {}
        emit({
            "event": "result",
            "id": trial.id,
            "status": "ok" if ok else "failed",
            "exit_code": exit_code,
            "stdout": info.get("stdout", ""),
            "stderr": info.get("stderr", ""),
            "node": info.get("node"),
            "node_ip": info.get("node_ip"),
            "attempts": trial.attempts,
            "seconds": round(time.time() - trial.t0, 3),
            "run_seconds": round(info["run_seconds"], 3) if "run_seconds" in info else None,
            "error": error,
        })

    def lost(trial, error, info=None):
        """An attempt was lost to something outside the trial: retry it or give up."""
        trial.errors.append(error)
        if trial.attempts <= args.max_retries:
            emit({"event": "retry", "id": trial.id, "attempt": trial.attempts + 1, "error": error,
                  "node": (info or {}).get("node")})
            submit(trial)
        else:
            finish(trial, info, error="lost %d attempt(s); last: %s" % (trial.attempts, error))

    def collect(ref):
        trial = pending.pop(ref)
        try:
            info = ray.get(ref)
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, retryable):
                lost(trial, "%s: %s" % (type(cause).__name__, cause))
            else:
                finish(trial, None, error="task raised: %s" % (e,))
            return
        except retryable as e:
            lost(trial, "%s: %s" % (type(e).__name__, e))
            return
        except Exception as e:
            finish(trial, None, error="%s: %s" % (type(e).__name__, e))
            return
        rc = info.get("returncode")
        if info.get("spawn_error"):
            finish(trial, info, error=info["spawn_error"])
        elif info.get("timed_out"):
            finish(trial, info, error="timed out after %gs" % trial.timeout)
        elif rc == 0:
            finish(trial, info, exit_code=0, ok=True)
        elif rc is not None and rc < 0:
            lost(trial, "process killed by signal %d on node %s" % (-rc, info.get("node")), info)
        else:
            finish(trial, info, exit_code=rc, error="exit code %s" % rc)

    try:
        while not (eof and not pending):
            # New trials: wait on the queue only when there is nothing to watch in Ray.
            try:
                while True:
                    kind, line = q.get(block=not pending and not eof, timeout=None if not pending else 0)
                    if kind == "eof":
                        eof = True
                        break
                    trial, err = parse_trial(line, args.num_cpus)
                    if isinstance(trial, Trial):
                        submit(trial)
                    else:
                        log("rejected trial line %.200r: %s" % (line, err))
                        bad = Trial(trial, [], {}, None, 0, None)
                        finish(bad, None, error="invalid trial: %s" % err)
            except queue.Empty:
                pass
            if not pending:
                continue
            refs = list(pending)
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.1)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                collect(ref)
            check_capacity()
    except BaseException as e:
        # Never drop a trial silently: whatever broke, every open trial gets its result line.
        log("internal error: %r" % (e,))
        for trial in list(pending.values()):
            finish(trial, None, error="bridge failed: %s: %s" % (type(e).__name__, e))
        pending.clear()
        _PROTO.flush()
        os._exit(1)

    # Every trial is reported; disconnect, but never hang on the way out.
    threading.Timer(10.0, lambda: os._exit(0)).start()
    try:
        ray.shutdown()
    except Exception:
        pass
    _PROTO.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
