#!/usr/bin/env bash
# Runs the sharding demo as a local cluster: its own etcd, N sharding-node processes and M gates
# (`goverse gate`), all from one generated configuration, with the demo's monitors auto-loaded.
#
#   samples/sharding_demo/run-cluster.sh [--nodes 3] [--gates 2] [--shards 64]
#                                        [--stress SECONDS] [--callers 32]
#                                        [--bin-dir DIR] [--dir DIR] [--port-base 52000]
#
# Without --stress it prints how to call the cluster and runs until Ctrl-C; with --stress it runs
# sharding-stress for that long, stops everything and exits with the stress client's status.
# --bin-dir uses binaries built already (sharding-node, sharding-stress, goverse); otherwise they
# are built with cargo (release). Logs and the configuration are kept in --dir (default: a new
# temporary directory, removed at the end unless the run failed).
set -euo pipefail

nodes=3
gates=2
shards=64
stress=""
callers=32
bin_dir=""
dir=""
port_base=52000
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gates) gates="$2"; shift 2 ;;
    --shards) shards="$2"; shift 2 ;;
    --stress) stress="$2"; shift 2 ;;
    --callers) callers="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --port-base) port_base="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
for n in "$nodes" "$gates" "$shards" "$callers" "$port_base"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "not a number: $n" >&2; exit 2; }
done
[ "$nodes" -ge 1 ] && [ "$gates" -ge 1 ] || { echo "--nodes and --gates must be at least 1" >&2; exit 2; }

root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -z "$bin_dir" ]; then
  echo "==> building (release)"
  (cd "$root" && cargo build --release --quiet -p goverse-sample-sharding -p goverse-cli)
  bin_dir="$root/target/release"
fi
for bin in sharding-node sharding-stress goverse; do
  [ -x "$bin_dir/$bin" ] || { echo "$bin_dir/$bin is missing (build it, or leave out --bin-dir)" >&2; exit 1; }
done
etcd_bin="$(command -v etcd || true)"
[ -n "$etcd_bin" ] || etcd_bin=/usr/bin/etcd
[ -x "$etcd_bin" ] || { echo "etcd is not installed: apt-get install etcd-server (Debian/Ubuntu)" >&2; exit 1; }

temp=""
if [ -z "$dir" ]; then
  temp="$(mktemp -d -t goverse-sharding-XXXXXX)"
  dir="$temp"
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# Ports: etcd client and peer, then the nodes, then the gates' gRPC and HTTP ports, then the
# nodes' operations ports (metrics, health).
etcd_port=$port_base
node_port=$((port_base + 10))
gate_port=$((node_port + nodes))
http_port=$((gate_port + gates))
ops_port=$((http_port + gates))

pids=()
names=()
status=0
stop_all() {
  trap - INT TERM
  echo "==> stopping"
  # Gates first, then the nodes (each hands its shards to the others and saves), then etcd.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    local waited=0
    while kill -0 "${pids[$i]}" 2>/dev/null && [ $waited -lt 300 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} did not stop within 30 s; killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
      status=1
    elif ! wait "${pids[$i]}" && [ "${names[$i]}" != etcd ]; then
      echo "${names[$i]} stopped with an error (see $dir/${names[$i]}.log)" >&2
      status=1
    fi
  done
  if [ -n "$temp" ] && [ $status -eq 0 ]; then
    rm -rf "$temp"
  else
    echo "logs and configuration: $dir"
  fi
}
trap 'stop_all; exit 130' INT TERM

start() {
  local name="$1"
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

# wait_for_line NAME TEXT PID: waits up to 60 s for TEXT in NAME's log while PID runs.
wait_for_line() {
  local name="$1" text="$2" pid="$3" i
  for ((i = 0; i < 600; i++)); do
    if grep -q "$text" "$dir/$name.log" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$dir/$name.log" >&2
  stop_all
  exit 1
}

echo "==> etcd on 127.0.0.1:$etcd_port"
start etcd "$etcd_bin" --name sharding-demo --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "sharding-demo=http://127.0.0.1:$((etcd_port + 1))" --logger zap --log-level warn
for ((i = 0; i < 300; i++)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$etcd_port") 2>/dev/null; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null || [ "$i" -eq 299 ]; then
    echo "etcd did not start:" >&2
    cat "$dir/etcd.log" >&2
    stop_all
    exit 1
  fi
  sleep 0.1
done

config="$dir/cluster.yml"
"$bin_dir/goverse" config gen --nodes "$nodes" --gates "$gates" --shards "$shards" \
  --etcd "127.0.0.1:$etcd_port" --sqlite "$dir/objects.db" \
  --node-port "$node_port" --gate-port "$gate_port" --http-port "$http_port" \
  --ops-port "$ops_port" -o "$config"
# The demo's monitors, and a short stability window for a demo: every process reads these.
export GOVERSE_CLUSTER__AUTO_LOAD_OBJECTS='[{type: GlobalMonitor, id: GlobalMonitor}, {type: ShardMonitor, id: ShardMonitor, per_shard: true}, {type: NodeMonitor, id: NodeMonitor, per_node: true}]'
export GOVERSE_CLUSTER__CLUSTER_STATE_STABILITY_DURATION=2s
export GOVERSE_CLUSTER__LEASE_TTL=3s
"$bin_dir/goverse" config check "$config"

for ((n = 1; n <= nodes; n++)); do
  start "node-$n" "$bin_dir/sharding-node" --config "$config" --node-id "node-$n"
done
for ((n = 1; n <= nodes; n++)); do
  wait_for_line "node-$n" "serving on" "${pids[$n]}"
done
for ((g = 1; g <= gates; g++)); do
  start "gate-$g" "$bin_dir/goverse" gate --config "$config" --gate-id "gate-$g"
  wait_for_line "gate-$g" "gRPC" "${pids[-1]}"
done

echo "==> waiting for the cluster to settle (every shard owned, ±1 per node)"
if ! "$bin_dir/goverse" cluster status --config "$config" --wait 120s; then
  stop_all
  exit 1
fi

if [ -n "$stress" ]; then
  echo "==> stress: $callers callers for ${stress}s through $gates gates"
  if ! "$bin_dir/sharding-stress" --config "$config" --duration "${stress}s" --callers "$callers"; then
    status=1
  fi
  stop_all
  exit $status
fi

cat <<EOF

The sharding demo runs: $nodes nodes, $gates gates, $shards shards (configuration: $config).
  $bin_dir/goverse call --gate 127.0.0.1:$gate_port SimpleCounter SimpleCounter-Counter-001 Increment
  $bin_dir/goverse call --gate 127.0.0.1:$gate_port ShardMonitor 'shard#5/ShardMonitor' GetStats
  $bin_dir/goverse call --gate 127.0.0.1:$gate_port GlobalMonitor GlobalMonitor GetUptime
  $bin_dir/goverse cluster status --config $config
  $bin_dir/sharding-stress --config $config --duration 10s
Ctrl-C stops everything.
EOF
while true; do
  sleep 1
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "${names[$i]} exited (see $dir/${names[$i]}.log)" >&2
      status=1
      stop_all
      exit 1
    fi
  done
done
