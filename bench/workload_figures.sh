#!/usr/bin/env bash
# The workload figures of the README: the swarm against its centralized baseline
# for the MLP and the CNN on generated glyphs (IID and Dirichlet α = 0.1), and the
# byte-level language model's loss curve on a corpus of this repository's sources.
# Each run is a `starling swarm --json` with a spec under specs/; a few minutes
# each on two cores. Writes the JSON of every run to $OUT (default target/figures).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/figures}
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p "$OUT" data
cargo build -q --release -p starling-node --bin starling
S="$TARGET/release/starling"
[ -e data/glyphs/train-images-idx3-ubyte.gz ] || "$S" data glyphs --out data/glyphs --train 20000 --test 4000 --seed 1
[ -e data/corpus.txt ] || "$S" data corpus --out data/corpus.txt --from .

run() { # name spec nodes rounds
    "$S" swarm --spec "specs/$2.toml" --nodes "$3" --rounds "$4" --json > "$OUT/$1.json" 2> "$OUT/$1.log"
}
run mlp-iid glyphs-mlp 4 10
run mlp-dirichlet glyphs-mlp-dirichlet 4 10
run cnn-iid glyphs-cnn 4 8
run cnn-dirichlet glyphs-cnn-dirichlet 4 8
run lm corpus-lm 2 10

python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
print("| run | nodes × rounds | swarm accuracy (mean / min) | centralized accuracy | swarm loss | centralized loss |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for name in ["mlp-iid", "mlp-dirichlet", "cnn-iid", "cnn-dirichlet", "lm"]:
    d = json.load(open(f"{out}/{name}.json"))
    print(f"| {name} ({d['model']}, {d['partition']}) | {d['nodes']} × {d['rounds']} | "
          f"{100*d['mean_accuracy']:.2f}% / {100*d['min_accuracy']:.2f}% | {100*d['centralized_accuracy']:.2f}% | "
          f"{d['mean_loss']:.4f} | {d['centralized_loss']:.4f} |")
d = json.load(open(f"{out}/lm.json"))
print("\nlanguage model, held-out loss per round (nats/byte; perplexity = exp):")
for p in d["curve"]:
    print(f"  round {p['round'] + 1:>2}: train {p['train_loss']:.3f}  held-out {p['eval_loss']:.3f}  "
          f"(perplexity {math.exp(p['eval_loss']):.1f}, next-byte accuracy {100*p['accuracy']:.1f}%)")
PY
