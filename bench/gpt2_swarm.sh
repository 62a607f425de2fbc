#!/usr/bin/env bash
# A 4-node gpt2-small swarm on one machine: four `starling run` processes on
# loopback TCP, 3 rounds, topk:0.01+int8 deltas (CODEC=... for another codec),
# node 0 evaluating. Prints each node's peak RSS (from /usr/bin/time -v), the
# machine's memory in use at its highest (sampled every 5 s), the wall time and
# the datadirs' sizes; the nodes' logs and `--summary` JSON stay in OUT.
#
#   bench/gpt2_swarm.sh TEXT [OUT]      # e.g. TEXT = fortunes.txt (README, "Workloads")
#   CODEC=lowrank:8+4bit bench/gpt2_swarm.sh TEXT [OUT]
#
# Needs a release build (`cargo build --release`) and /usr/bin/time.
set -euo pipefail
TEXT=${1:?usage: bench/gpt2_swarm.sh TEXT [OUT]}
OUT=${2:-/tmp/gpt2-swarm}
ROUNDS=${ROUNDS:-3}
CODEC=${CODEC:-topk:0.01+int8}
PORT=${PORT:-47101}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release/starling
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package: time)" >&2; exit 1; }

rm -rf "$OUT"; mkdir -p "$OUT"
"$BIN" spec new --model gpt2-small --codec "$CODEC" --data "text:$TEXT" --out "$OUT/spec.toml"
for i in 0 1 2 3; do "$BIN" init --datadir "$OUT/n$i" > "$OUT/init$i.txt" 2>&1; done
ID0=$(grep -o "peer id [A-Za-z0-9]*" "$OUT/init0.txt" | awk '{print $3}')

pids=()
stop() { for p in "${pids[@]}"; do pkill -P "$p" 2>/dev/null || true; done; }
trap stop EXIT
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
start=$(date +%s)
for i in 0 1 2 3; do
  if [ "$i" = 0 ]; then
    net=(--listen "/ip4/127.0.0.1/tcp/$PORT" --evaluate)
  else
    net=(--listen /ip4/127.0.0.1/tcp/0 --bootnodes "/ip4/127.0.0.1/tcp/$PORT/p2p/$ID0")
  fi
  /usr/bin/time -v "$BIN" run --spec "$OUT/spec.toml" --datadir "$OUT/n$i" "${net[@]}" \
    --no-mdns --no-http --wait-peers 3 --wait-timeout 600 --rounds "$ROUNDS" \
    --shard "$i/4" --summary "$OUT/summary$i.json" > "$OUT/node$i.log" 2>&1 &
  pids+=($!)
done
peak=0
while alive; do
  used=$(free -m | awk '/Mem:/ {print $3}')
  [ "$used" -gt "$peak" ] && peak=$used
  sleep 5
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "wall $(( $(date +%s) - start )) s; machine memory in use at most $peak MiB"
for i in 0 1 2 3; do
  echo "node $i: $(grep -h 'Maximum resident\|terminated by signal' "$OUT/node$i.log" | tr -s ' \t' ' ')"
done
grep -h "round merged" "$OUT/node0.log" | sed 's/.*round merged/round merged/' || true
du -sh "$OUT"/n?
exit $status
