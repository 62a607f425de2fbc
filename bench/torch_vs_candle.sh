#!/usr/bin/env bash
# Training speed of Starling's two CPU training paths (`starling bench train`:
# the hand-written fast step, and candle's autograd as the reference) next to
# PyTorch, at equal thread counts, for the MLP (784-256-10) and the CNN, batch 64.
# The three run interleaved (fast, reference, torch, fast, ...) REPS times so
# that load on a shared machine falls on all alike; the table shows medians.
# Not part of CI.
#
#   bench/torch_vs_candle.sh            # threads 1 and 2, 200 steps, 5 repetitions
#   THREADS="1 2 4" STEPS=500 REPS=7 bench/torch_vs_candle.sh
#
# Creates a virtual environment with torch in $VENV (default target/bench-venv):
# the CPU wheel index first, plain PyPI otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
STEPS=${STEPS:-200}
REPS=${REPS:-5}
VENV=${VENV:-target/bench-venv}
TARGET=${CARGO_TARGET_DIR:-target}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu \
        || "$VENV/bin/pip" install -q torch
fi
cargo build -q --release -p starling-node --bin starling
STARLING="$TARGET/release/starling"

runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for rep in $(seq "$REPS"); do
    for model in mlp cnn; do
        for t in $THREADS; do
            for path in fast reference; do
                STARLING_TRAIN_PATH=$path RAYON_NUM_THREADS=$t \
                    "$STARLING" bench train --model "$model" --threads "$t" --steps "$STEPS" --json >>"$runs"
            done
            OMP_NUM_THREADS=$t "$VENV/bin/python" bench/torch_mlp_cnn.py \
                --model "$model" --threads "$t" --steps "$STEPS" >>"$runs"
        done
    done
    echo "repetition $rep of $REPS done" >&2
done

python3 - "$runs" "$REPS" "$STEPS" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
median = {}
for r in runs:
    key = (r["model"], r["threads"], r.get("path", "torch"))
    median.setdefault(key, []).append(r["samples_per_second"])
median = {k: statistics.median(v) for k, v in median.items()}
print(f"medians of {sys.argv[2]} interleaved runs of {sys.argv[3]} steps, batch 64, samples/s\n")
print("| model | threads | fast | reference (candle autograd) | torch | fast / torch | reference / torch |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for model, threads in sorted({(m, t) for m, t, _ in median}, key=lambda k: (k[0] != "mlp", k[1])):
    f, r, p = (median[(model, threads, path)] for path in ("fast", "reference", "torch"))
    print(f"| {model} | {threads} | {f:,.0f} | {r:,.0f} | {p:,.0f} | {f / p:.2f}x | {r / p:.2f}x |")
PY
