#!/usr/bin/env bash
# Redis commands per second made by idle worker processes, against the number of queues they
# serve: a private redis-server on a free loopback port, `worker-cli work` processes with
# builtin handlers and nothing to do, and INFO commandstats read before and after a window.
#
#   benches/idle/run.sh [--processes 1] [--queues 1,3,10,30] [--seconds 10]
#
# Uses $WORKER_CLI, else target/release/worker-cli, else target/debug/worker-cli (built if missing), and $RIVULET_REDIS_SERVER or redis-server.
# Prints one line per queue count: commands/s per idle process, and the top commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
processes=1 queues="1,3,10,30" seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --processes) processes=$2; shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
cli=${WORKER_CLI:-target/release/worker-cli}
[ -x "$cli" ] || cli=target/debug/worker-cli
[ -x "$cli" ] || cargo build -q -p worker-cli
server="${RIVULET_REDIS_SERVER:-redis-server}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
"$server" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
url="redis://127.0.0.1:$port"
total() { redis-cli -p "$port" info commandstats | awk -F'[=,:]' '/^cmdstat_/ {n += $3} END {print n+0}'; }
"$server" --version | head -1
for q in ${queues//,/ }; do
  redis-cli -p "$port" flushall >/dev/null
  names=$(seq -f "idle%g" 1 "$q" | paste -sd, -)
  pids=()
  for _ in $(seq "$processes"); do
    "$cli" work --redis-url "$url" --queue "$names" --exec noop=true >/dev/null 2>"$dir/worker.log" &
    pids+=($!)
  done
  sleep 3 # start-up (registry, groups) is not idle cost
  redis-cli -p "$port" config resetstat >/dev/null
  sleep "$seconds"
  calls=$(total)
  top=$(redis-cli -p "$port" info commandstats | awk -F'[_:=,]' '/^cmdstat_/ {print $4, $2}' | sort -rn | head -4 | awk '{printf "%s %s, ", $2, $1}')
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  awk -v c="$calls" -v s="$seconds" -v p="$processes" -v q="$q" \
    'BEGIN {printf "queues %3d  processes %d  %7.1f commands/s per idle process  (%s...)\n", q, p, c / s / p, "'"${top%, }"'"}'
done
