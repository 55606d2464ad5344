#!/usr/bin/env bash
# Starts redis-server and two gateway replicas that share it, then waits; Ctrl-C stops all three.
#   bash examples/replicas/run.sh
#   A_PORT=8001 B_PORT=8002 REDIS_PORT=6390 REPLICA_TOKENS_PER_HOUR=100000   (the defaults)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
redis_port="${REDIS_PORT:-6390}"
export REDIS_URL="redis://127.0.0.1:${redis_port}"
hub="${MCP_HUB:-mcp-hub}"
data="$(mktemp -d)"
pids=()
stop() {
  # Stop exactly the processes this script started.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$data" >"$data/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
  sleep 0.1
done

$hub serve --config "$here/gateway-a.yaml" --port "${A_PORT:-8001}" &
pids+=($!)
$hub serve --config "$here/gateway-b.yaml" --port "${B_PORT:-8002}" &
pids+=($!)
echo "replicas: http://127.0.0.1:${A_PORT:-8001}/mcp and http://127.0.0.1:${B_PORT:-8002}/mcp, Redis at $REDIS_URL" >&2
wait
