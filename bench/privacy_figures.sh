#!/usr/bin/env bash
# Accuracy against the privacy budget: a 4-node swarm with record-level DP-SGD
# at ε ∈ {1, 2, 4, 8} (δ = 1e-5, clip 1, noise calibrated to spend the budget
# over the run's rounds) next to the same swarm without privacy (ε = ∞), on the
# generated glyphs (IDX, MNIST-like) and on the built-in synthetic task; then the
# per-step cost of DP-SGD against the plain step (examples/dp_step_time.rs).
# Writes every run's JSON and log to $OUT (default target/privacy). Set S and
# STEP_TIME to prebuilt binaries to skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/privacy}
ROUNDS=${ROUNDS:-10}
NODES=${NODES:-4}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT" data
if [ -z "${S:-}" ]; then
    cargo build -q --release -p starling-node --bin starling --example dp_step_time
    S="$TARGET/release/starling"
    STEP_TIME="$TARGET/release/examples/dp_step_time"
fi
[ -e data/glyphs/train-images-idx3-ubyte.gz ] || "$S" data glyphs --out data/glyphs --train 20000 --test 4000 --seed 1

common() { # name
    cat <<TOML
name = "$1"
seed = 1
codec = "dense"
feedback_decay = 0.8
aggregation = "weighted-mean"

[inner]
steps = 20
batch_size = 256
lr = 0.002
weight_decay = 0.0

[outer]
lr = 0.7
momentum = 0.9
nesterov = true

[round]
deadline_ms = 120000
quorum = 1.0
TOML
}
task() { # glyphs|synthetic
    if [ "$1" = glyphs ]; then
        printf '\n[model]\nkind = "mlp"\nlayers = [784, 128, 10]\n\n[dataset]\nkind = "idx:data/glyphs"\nsamples_per_node = 5000\neval_samples = 4000\npartition = "iid"\n'
    else
        printf '\n[model]\nkind = "mlp"\nlayers = [32, 128, 128, 10]\n\n[dataset]\nkind = "synthetic"\nsamples_per_node = 5000\neval_samples = 4096\npartition = "iid"\n'
    fi
}
for t in glyphs synthetic; do
    for eps in inf 8 4 2 1; do
        spec="$OUT/$t-eps$eps.toml"
        { common "privacy-$t-eps$eps"; task "$t"
          [ "$eps" = inf ] || printf '\n[privacy]\nlevel = "record"\nepsilon = %s.0\ndelta = 1e-5\nclip = 1.0\nrounds = %s\n' "$eps" "$ROUNDS"
        } > "$spec"
        "$S" swarm --spec "$spec" --nodes "$NODES" --rounds "$ROUNDS" --json > "$OUT/$t-eps$eps.json" 2> "$OUT/$t-eps$eps.log" &
    done
    wait
done

python3 - "$OUT" "$NODES" "$ROUNDS" <<'PY'
import json, sys
out, nodes, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"{nodes} nodes × {rounds} rounds × 20 steps, batch 256 (Poisson q = 256/5000), δ = 1e-5, clip 1")
print("| task | ε budget | ε spent | swarm accuracy (mean / min) | vs. no privacy |")
print("| --- | ---: | ---: | ---: | ---: |")
for t in ["glyphs", "synthetic"]:
    base = json.load(open(f"{out}/{t}-epsinf.json"))["mean_accuracy"]
    for eps in ["inf", "8", "4", "2", "1"]:
        d = json.load(open(f"{out}/{t}-eps{eps}.json"))
        spent = "–" if d.get("epsilon") is None else f"{d['epsilon']:.2f}"
        print(f"| {t} | {'∞' if eps == 'inf' else eps} | {spent} | "
              f"{100*d['mean_accuracy']:.2f}% / {100*d['min_accuracy']:.2f}% | "
              f"{100*(d['mean_accuracy'] - base):+.2f} points |")
PY
echo
"${STEP_TIME}" 10
