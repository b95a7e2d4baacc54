#!/usr/bin/env bash
# Redis commands per second made by idle worker processes, against the number of queues they
# serve: a thin wrapper over rivulet-bench's `idle` scenario (benches/rivulet-bench/idle.rs),
# which starts a private redis-server, real `worker-cli work` processes with nothing to do, and
# reads INFO commandstats before and after a window (calls inside Lua included).
#
#   benches/idle/run.sh [--processes 4] [--queues 1,10,50,200] [--seconds 10] [rivulet-bench flags]
#
# Builds rivulet-bench and worker-cli (release) first. $RIVULET_REDIS_SERVER picks the
# redis-server binary. Tables on stdout, JSON in bench-results/<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --processes) args+=(--idle-processes "$2"); shift 2 ;;
    --queues) args+=(--idle-queues "$2"); shift 2 ;;
    --seconds) args+=(--idle-seconds "$2"); shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo build --release --locked -q -p rivulet-suite --bin rivulet-bench -p worker-cli --bin worker-cli
exec target/release/rivulet-bench --only idle --no-plots "${args[@]}"
