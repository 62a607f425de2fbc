#!/usr/bin/env bash
# Training speed of candle (`starling bench train`) next to PyTorch on the CPU, at
# equal thread counts, for the MLP (784-256-10) and the CNN, batch 64. Not part of CI.
#
#   bench/torch_vs_candle.sh            # threads 1 and 2, 200 steps
#   THREADS="1 2 4" STEPS=500 bench/torch_vs_candle.sh
#
# Creates a virtual environment with torch in $VENV (default target/bench-venv):
# the CPU wheel index first, plain PyPI otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
STEPS=${STEPS:-200}
VENV=${VENV:-target/bench-venv}
TARGET=${CARGO_TARGET_DIR:-target}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu \
        || "$VENV/bin/pip" install -q torch
fi
cargo build -q --release -p starling-node --bin starling
STARLING="$TARGET/release/starling"

printf "| model | threads | candle samples/s | torch samples/s | candle / torch |\n| --- | ---: | ---: | ---: | ---: |\n"
for model in mlp cnn; do
    for t in $THREADS; do
        c=$(RAYON_NUM_THREADS=$t "$STARLING" bench train --model "$model" --threads "$t" --steps "$STEPS" --json)
        p=$(OMP_NUM_THREADS=$t "$VENV/bin/python" bench/torch_mlp_cnn.py --model "$model" --threads "$t" --steps "$STEPS")
        python3 - "$model" "$t" "$c" "$p" <<'PY'
import json, sys
m, t, c, p = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
cs, ps = c["samples_per_second"], p["samples_per_second"]
print(f"| {m} | {t} | {cs:,.0f} | {ps:,.0f} | {cs / ps:.2f}x |")
PY
    done
done
