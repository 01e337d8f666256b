#!/usr/bin/env bash
# A local Ray cluster for crunch's `search` tests and CI: one head that runs no trials (--num-cpus=0)
# plus N worker nodes with C CPUs each, all on this host, no network use beyond loopback.
#
#   scripts/ray-cluster.sh start [--workers N] [--cpus-per-worker C] [--port P]
#       Starts the cluster, waits until every node is registered and prints the address to pass to
#       `crunch search --ray` / ray_bridge.py --address (e.g. 127.0.0.1:6380) on stdout;
#       progress goes to stderr, so ADDR=$(scripts/ray-cluster.sh start) works. N=2, C=1 by default.
#   scripts/ray-cluster.sh status      addresses, and every node: state, name, CPUs, raylet PID, node id
#   scripts/ray-cluster.sh address     the address alone (exit 1 when no cluster is recorded)
#   scripts/ray-cluster.sh kill-worker I [--raylet-only]
#       SIGKILLs worker node I (1-based): its raylet and every process under it (its Ray workers and
#       the trial processes they run), like a machine that dies. --raylet-only kills just the raylet
#       (its workers notice and exit by themselves). Ray marks the node dead after the health checks
#       below miss (about 3 s here).
#   scripts/ray-cluster.sh add-worker [--cpus C]
#       Starts one more worker node (crunch-worker-<next index>), e.g. to replace a killed one.
#   scripts/ray-cluster.sh venv        installs $CRUNCH_CACHE/ray-venv if needed; prints its python
#   scripts/ray-cluster.sh stop        `ray stop --force` and forget the state
#
# Environment:
#   CRUNCH_CACHE   default ~/.cache/crunch; Ray lives in $CRUNCH_CACHE/ray-venv (ray[default]==2.60.0,
#                  installed with pip if missing)
#   RAY_STATE_DIR  default ${TMPDIR:-/tmp}/crunch-ray-$UID: cluster.env (ADDRESS, PORT, ...), workers.json
#                  ([{"index", "name", "node_id", "raylet_pid", "cpus"}]), start logs, and Ray's own
#                  temp dir (sessions, logs, sockets; kept short because of the 107-byte socket path limit)
#   RAY_health_check_period_ms / _timeout_ms / _failure_threshold
#                  read by the head's GCS, which marks a node dead after `threshold` failed checks.
#                  Ray's defaults (3000 ms, 10000 ms, 5) take ~15 s to notice a killed node and ~65 s
#                  for a hung one; this script defaults to 1000 ms, 2000 ms, 3 (~3 s and ~11 s, measured).
#
# Notes: Ray rewrites a loopback --node-ip-address to the host's routable address, so nodes are
# advertised with that IP (the GCS and raylets listen on all interfaces; traffic stays on the host).
# `ray stop` stops every Ray process of this user on the host, other clusters included.
set -euo pipefail

CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
VENV="$CACHE/ray-venv"
RAY_VERSION=2.60.0
STATE="${RAY_STATE_DIR:-${TMPDIR:-/tmp}/crunch-ray-$(id -u)}"
TMP_DIR="$STATE/tmp"
export RAY_USAGE_STATS_ENABLED=0
export RAY_health_check_period_ms="${RAY_health_check_period_ms:-1000}"
export RAY_health_check_timeout_ms="${RAY_health_check_timeout_ms:-2000}"
export RAY_health_check_failure_threshold="${RAY_health_check_failure_threshold:-3}"

# Flags for every node: no log monitor (the bridge does not stream worker logs), OS-chosen ports for
# Python workers (nodes on one host would otherwise share the 10002-19999 range) and a small object
# store (trial results are a few KB; Ray's default reserves 30% of RAM per node).
COMMON_ARGS=(--disable-usage-stats --include-log-monitor=false --min-worker-port=0 --max-worker-port=0
             --object-store-memory=$((128 * 1024 * 1024)))

say() { echo "ray-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

ensure_venv() {
  if [ -x "$VENV/bin/ray" ] && "$VENV/bin/python" -c "import ray, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" 2>/dev/null; then
    return
  fi
  say "installing ray[default]==$RAY_VERSION into $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "ray[default]==$RAY_VERSION" >&2
}

# free_ports N: N distinct TCP ports that are free right now.
free_ports() {
  "$VENV/bin/python" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# nodes_json ADDRESS: the cluster's nodes as JSON lines, straight from the GCS (no driver needed);
# fails at once when nothing listens there (GcsClient alone would wait 40 s).
nodes_json() {
  "$VENV/bin/python" - "$1" <<'EOF'
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=2).close()
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
c = GcsClient(address=sys.argv[1])
for node_id, n in c.get_all_node_info(timeout=5).items():
    print(json.dumps({"node_id": node_id.hex(), "name": n.node_name,
                      "alive": n.state == GcsNodeInfo.GcsNodeState.ALIVE, "head": n.is_head_node,
                      "cpus": n.resources_total.get("CPU", 0.0)}))
EOF
}

# raylet_pid NODE_NAME: PID of the raylet started with --node-name=NODE_NAME under our temp dir.
raylet_pid() {
  local pid args
  while read -r pid args; do
    case "$args" in
      *"/raylet/raylet "*"$TMP_DIR/"*"--node-name=$1 "* | *"/raylet/raylet "*"$TMP_DIR/"*"--node-name=$1") echo "$pid"; return 0 ;;
    esac
  done < <(ps -eo pid=,args=)
  return 1
}

load_state() {
  [ -f "$STATE/cluster.env" ] || die "no cluster recorded in $STATE (run: $0 start)"
  # shellcheck disable=SC1091
  . "$STATE/cluster.env"
}

cmd_start() {
  local workers=2 cpus=1 port=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --workers) workers=$2; shift 2 ;;
      --cpus-per-worker) cpus=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ $workers =~ ^[0-9]+$ && $cpus =~ ^[1-9][0-9]*$ ]] || die "--workers and --cpus-per-worker take whole numbers (ray start --num-cpus is an integer)"
  ensure_venv
  if [ -f "$STATE/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$STATE/cluster.env"
    if nodes_json "$ADDRESS" >/dev/null 2>&1; then
      die "a cluster is already running at $ADDRESS (state in $STATE); run: $0 stop"
    fi
  fi
  # Only what this script puts there: RAY_STATE_DIR may be a directory of the caller's.
  rm -rf "$STATE/cluster.env" "$STATE/workers.json" "$STATE"/*.log "$TMP_DIR"
  mkdir -p "$TMP_DIR"
  # A start that fails half-way must not leave Ray processes behind.
  trap 'say "start failed; stopping Ray"; cmd_stop' EXIT
  local t0 ports
  t0=$(date +%s.%N)
  # Fixed ports that would collide between nodes on one host: the GCS, the Ray client server and each
  # node's dashboard agent (Ray's default 52365 for all of them). The rest (node and object manager,
  # metrics, agents' gRPC, Python workers: --min/max-worker-port=0) are picked by the OS per node.
  read -r -a ports <<<"$(free_ports $((3 + workers)))"
  port=${port:-${ports[0]}}
  say "starting head on 127.0.0.1:$port (num-cpus=0; log in $STATE/head.log)"
  "$VENV/bin/ray" start --head --node-ip-address=127.0.0.1 --port="$port" --num-cpus=0 \
    --include-dashboard=false --dashboard-host=127.0.0.1 --ray-client-server-port="${ports[1]}" \
    --dashboard-agent-listen-port="${ports[2]}" --node-name=crunch-head --temp-dir="$TMP_DIR" \
    "${COMMON_ARGS[@]}" >"$STATE/head.log" 2>&1 || { cat "$STATE/head.log" >&2; die "head failed to start"; }
  local address="127.0.0.1:$port"
  ADDRESS=$address
  CPUS_PER_WORKER=$cpus
  {
    echo "ADDRESS=$address"
    echo "PORT=$port"
    echo "CLIENT_ADDRESS=ray://127.0.0.1:${ports[1]}"
    echo "WORKERS=$workers"
    echo "CPUS_PER_WORKER=$cpus"
    echo "TMP_DIR=$TMP_DIR"
  } >"$STATE/cluster.env"
  echo "[]" >"$STATE/workers.json"
  local i
  for i in $(seq 1 "$workers"); do
    start_worker "$i" "$cpus" "${ports[$((2 + i))]}"
  done
  wait_nodes "$address" $((workers + 1))
  trap - EXIT
  say "cluster ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s: head + $workers worker(s) x $cpus CPU; state in $STATE"
  echo "$address"
}

# start_worker I CPUS AGENT_PORT: starts worker node crunch-worker-I, waits until the GCS lists it and
# records its node id and raylet PID in workers.json.
start_worker() {
  local i=$1 cpus=$2 agent_port=$3
  say "starting worker $i ($cpus CPU)"
  "$VENV/bin/ray" start --address="$ADDRESS" --num-cpus="$cpus" --node-name="crunch-worker-$i" \
    --dashboard-agent-listen-port="$agent_port" "${COMMON_ARGS[@]}" \
    >"$STATE/worker-$i.log" 2>&1 || { cat "$STATE/worker-$i.log" >&2; die "worker $i failed to start"; }
  local pid node_id="" deadline=$((SECONDS + 60))
  pid=$(raylet_pid "crunch-worker-$i") || die "cannot find the raylet of crunch-worker-$i"
  while [ -z "$node_id" ]; do
    node_id=$(nodes_json "$ADDRESS" 2>/dev/null | grep "\"name\": \"crunch-worker-$i\"" | grep '"alive": true' \
      | sed 's/.*"node_id": "\([0-9a-f]*\)".*/\1/' || true)
    [ -n "$node_id" ] || { [ $SECONDS -lt $deadline ] || die "crunch-worker-$i did not register in 60 s"; sleep 0.3; }
  done
  "$VENV/bin/python" - "$STATE/workers.json" "$i" "$node_id" "$pid" "$cpus" <<'EOF'
import json, sys
path, i, node_id, pid, cpus = sys.argv[1:]
workers = [w for w in json.load(open(path)) if w["index"] != int(i)]
workers.append({"index": int(i), "name": "crunch-worker-" + i, "node_id": node_id,
                "raylet_pid": int(pid), "cpus": float(cpus)})
json.dump(workers, open(path, "w"))
EOF
}

# wait_nodes ADDRESS N: until the GCS lists at least N alive nodes.
wait_nodes() {
  local deadline=$((SECONDS + 60)) alive
  while :; do
    alive=$(nodes_json "$1" 2>/dev/null | grep -c '"alive": true' || true)
    [ "$alive" -ge "$2" ] && return 0
    [ $SECONDS -lt $deadline ] || die "only $alive of $2 nodes registered after 60 s"
    sleep 0.3
  done
}

cmd_add_worker() {
  local cpus=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --cpus-per-worker | --cpus) cpus=$2; shift 2 ;;
      *) usage ;;
    esac
  done
  load_state
  cpus=${cpus:-$CPUS_PER_WORKER}
  [[ $cpus =~ ^[1-9][0-9]*$ ]] || die "--cpus takes a whole number"
  local i port
  i=$("$VENV/bin/python" -c 'import json, sys; print(1 + max([w["index"] for w in json.load(open(sys.argv[1]))] or [0]))' "$STATE/workers.json")
  port=$(free_ports 1)
  start_worker "$i" "$cpus" "$port"
  echo "crunch-worker-$i"
}

cmd_status() {
  load_state
  echo "address: $ADDRESS"
  echo "client:  $CLIENT_ADDRESS  (Ray Client, for a driver on a host without a node of this cluster)"
  echo "state:   $STATE"
  local listing
  if ! listing=$(nodes_json "$ADDRESS" 2>/dev/null); then
    echo "GCS at $ADDRESS is not answering"
    return 1
  fi
  LISTING="$listing" "$VENV/bin/python" - "$STATE/workers.json" <<'EOF'
import json, os, sys
workers = {w["node_id"]: w for w in json.load(open(sys.argv[1]))} if os.path.exists(sys.argv[1]) else {}
def running(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
print("%-6s %-16s %-5s %-11s %s" % ("state", "name", "cpus", "raylet_pid", "node_id"))
nodes = [json.loads(line) for line in os.environ["LISTING"].splitlines()]
for n in sorted(nodes, key=lambda n: (not n["head"], n["name"])):
    w = workers.get(n["node_id"], {})
    pid = w.get("raylet_pid")
    pid_s = "-" if pid is None else ("%d" % pid if running(pid) else "%d(gone)" % pid)
    print("%-6s %-16s %-5g %-11s %s" % ("ALIVE" if n["alive"] else "DEAD", n["name"], n["cpus"], pid_s, n["node_id"]))
EOF
}

# descendants PID: PID and every process below it.
descendants() {
  local all
  all=$(ps -eo pid=,ppid=)
  local frontier=("$1") out=("$1") p c
  while [ ${#frontier[@]} -gt 0 ]; do
    p=${frontier[0]}
    frontier=("${frontier[@]:1}")
    while read -r c; do
      out+=("$c")
      frontier+=("$c")
    done < <(awk -v p="$p" '$2 == p { print $1 }' <<<"$all")
  done
  echo "${out[@]}"
}

cmd_kill_worker() {
  [ $# -ge 1 ] || usage
  local index=$1 raylet_only=0
  [ "${2:-}" = "--raylet-only" ] && raylet_only=1
  load_state
  local pid
  pid=$("$VENV/bin/python" -c 'import json, sys
for w in json.load(open(sys.argv[1])):
    if w["index"] == int(sys.argv[2]): print(w["raylet_pid"])' "$STATE/workers.json" "$index")
  [ -n "$pid" ] || die "no worker $index in $STATE/workers.json"
  kill -0 "$pid" 2>/dev/null || die "raylet $pid of worker $index is not running"
  if [ $raylet_only = 1 ]; then
    say "SIGKILL raylet $pid of crunch-worker-$index"
    kill -KILL "$pid"
  else
    local pids
    pids=$(descendants "$pid")
    say "SIGKILL crunch-worker-$index: raylet $pid and processes $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
}

cmd_stop() {
  if [ -x "$VENV/bin/ray" ]; then
    local out
    out=$("$VENV/bin/ray" stop --force 2>&1 || true)
    say "$(grep -o 'Stopped all [0-9]* Ray processes\|Did not find any active Ray processes' <<<"$out" | head -1)"
  fi
  rm -rf "$STATE/cluster.env" "$STATE/workers.json" "$STATE"/*.log "$TMP_DIR"
  rmdir "$STATE" 2>/dev/null || true
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  address) load_state; echo "$ADDRESS" ;;
  add-worker) shift; cmd_add_worker "$@" ;;
  venv) ensure_venv; echo "$VENV/bin/python" ;;
  kill-worker) shift; cmd_kill_worker "$@" ;;
  *) usage ;;
esac
