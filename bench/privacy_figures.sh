#!/usr/bin/env bash
# Accuracy against the privacy budget: a 4-node swarm with record-level DP-SGD
# at ε ∈ {1, 2, 4, 8} (δ = 1e-5, clip 1, noise calibrated to spend the budget
# over the run's rounds) next to the same swarm without privacy (ε = ∞), on
# generated glyphs (IDX, MNIST-sized: 60 000 training images, 15 000 per node)
# and on the built-in synthetic task; then the per-step cost of DP-SGD against
# the plain step (examples/dp_step_time.rs).
#
# Private runs train with inner SGD (momentum 0.9, lr 1 on the clipped, noised
# mean gradient) and plain outer averaging: AdamW and outer Nesterov momentum
# both amplify the noise. Those settings diverge without clipping, so ε = ∞ is
# the same swarm (nodes, model, data, rounds, batch) with the optimizer that
# trains it best without privacy: inner SGD lr 0.1, outer Nesterov 0.7 / 0.9.
#
# Writes every run's spec, JSON and log to $OUT (default target/privacy). Set S
# and STEP_TIME to prebuilt binaries to skip the build; JOBS runs that many
# swarms at once (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/privacy}
ROUNDS=${ROUNDS:-20}
NODES=${NODES:-4}
PER_NODE=${PER_NODE:-15000}
BATCH=${BATCH:-1024}
JOBS=${JOBS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT" data
if [ -z "${S:-}" ]; then
    cargo build -q --release -p starling-node --bin starling --example dp_step_time
    S="$TARGET/release/starling"
    STEP_TIME="$TARGET/release/examples/dp_step_time"
fi
GLYPHS=data/glyphs60k
[ -e "$GLYPHS/train-images-idx3-ubyte.gz" ] || "$S" data glyphs --out "$GLYPHS" --train 60000 --test 10000 --seed 1

spec() { # name task eps
    local inner outer
    if [ "$3" = inf ]; then
        inner='lr = 0.1'; outer=$'lr = 0.7\nmomentum = 0.9'
    else
        inner='lr = 1.0'; outer=$'lr = 1.0\nmomentum = 0.0'
    fi
    cat <<TOML
name = "$1"
seed = 1
codec = "dense"
feedback_decay = 0.8
aggregation = "weighted-mean"

[inner]
steps = 20
batch_size = $BATCH
$inner
optimizer = "sgd"
momentum = 0.9
weight_decay = 0.0

[outer]
$outer
nesterov = true

[round]
deadline_ms = 300000
quorum = 1.0
TOML
    if [ "$2" = glyphs ]; then
        printf '\n[model]\nkind = "mlp"\nlayers = [784, 128, 10]\n\n[dataset]\nkind = "idx:%s"\nsamples_per_node = %s\neval_samples = 4000\npartition = "iid"\n' "$GLYPHS" "$PER_NODE"
    else
        printf '\n[model]\nkind = "mlp"\nlayers = [32, 128, 128, 10]\n\n[dataset]\nkind = "synthetic"\nsamples_per_node = %s\neval_samples = 4096\npartition = "iid"\n' "$PER_NODE"
    fi
    [ "$3" = inf ] || printf '\n[privacy]\nlevel = "record"\nepsilon = %s.0\ndelta = 1e-5\nclip = 1.0\nrounds = %s\n' "$3" "$ROUNDS"
}

for t in glyphs synthetic; do
    for eps in inf 8 4 2 1; do
        name="$t-eps$eps"
        spec "privacy-$name" "$t" "$eps" > "$OUT/$name.toml"
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
        "$S" swarm --spec "$OUT/$name.toml" --nodes "$NODES" --rounds "$ROUNDS" --json > "$OUT/$name.json" 2> "$OUT/$name.log" &
    done
done
wait

python3 - "$OUT" "$NODES" "$ROUNDS" "$PER_NODE" "$BATCH" <<'PY'
import json, sys
out, nodes, rounds, per_node, batch = sys.argv[1:6]
print(f"{nodes} nodes × {rounds} rounds × 20 steps, batch {batch} (Poisson q = {batch}/{per_node}), δ = 1e-5, clip 1")
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
