#!/usr/bin/env python3
"""Bytes against held-out loss on the GPT presets: a sweep of codecs, their
chunk size and bits, and the outer rule, each a `starling swarm --json` of the
same spec, seed and rounds, against the dense run. Not part of CI.

    cargo build --release -p starling-node                      # from the repository's root
    bench/lm_sweep.py --text fortunes.txt                        # lm-small, the default grid
    bench/lm_sweep.py --text fortunes.txt --model lm-small --d-model 384 --heads 6 \
        --configs dense,sparse:32/4096+2bit@sparseloco:5
    bench/lm_sweep.py --text fortunes.txt --list                 # the default grid

A config is CODEC[@RULE:LR[:MOMENTUM_OR_DECAY]]: `@momentum:3:0.5` steps the
outer optimizer with lr 3 and momentum 0.5; `@sparseloco:5:0.9` takes
SparseLoCo's rule (no outer momentum) with lr 5 and feedback decay 0.9. Without
`@`, the codec gets the outer step `starling spec new --codec` writes for it.

Every byte a node sends is counted (deltas, headers, signatures, gossip
control, duplicates): `bytes_sent_per_node_per_round` of `starling swarm
--json`. The ratio is the reference's bytes (`--reference`, dense by default) over
the config's; the loss ratio is the
config's held-out loss (nats per token, the mean over nodes after the last
round) over the best of the dense configs (the outer step tuned for dense
too). Each run's JSON is kept in --out, and a config already there is not run
again (--rerun runs it again).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib

# The first sweep's table in docs/compression.md (lm-small, 2 nodes × 8 rounds
# of 10 steps × 4 windows).
# Its rows at lr 5, β 0.8 were the outer step `spec new` wrote then; it now
# writes β 0.5 for the sparse codec on a language model.
DEFAULT_GRID = [
    "dense",
    "dense@momentum:1:0",
    "dense@momentum:1:0.9",
    "topk:0.01+int8",
    "sparse:64/4096+2bit@sparseloco:5:0.8",
    "sparse:32/4096+4bit@sparseloco:5:0.8",
    "sparse:32/4096+2bit@sparseloco:5:0.8",
    "sparse:32/4096+2bit@sparseloco:1:0.95",
    "sparse:32/4096+2bit@sparseloco:10:0.8",
    "sparse:32/4096+2bit@sparseloco:3:0.9",
    "sparse:32/4096+2bit@momentum:3:0.5",
    "sparse:16/4096+2bit@sparseloco:5:0.8",
    "sparse:16/4096+2bit@sparseloco:3:0.9",
    "sparse:16/4096+2bit@sparseloco:7:0.8",
    "sparse:16/4096+2bit@sparseloco:9:0.8",
    "sparse:16/4096+2bit@sparseloco:5:0.9",
    "sparse:16/4096+2bit@sparseloco:7:0.6",
    "sparse:16/4096+4bit@sparseloco:5:0.8",
    "sparse:8/4096+2bit@sparseloco:5:0.8",
    "sparse:24/4096+2bit@sparseloco:7:0.8",
    "sparse:32/4096+2bit@sparseloco:5:0.6",
    "sparse:32/4096+2bit@sparseloco:7:0.6",
    "sparse:32/4096+2bit@sparseloco:5:0.3",
    "sparse:32/4096+2bit@sparseloco:5:0",
    "sparse:16/4096+2bit@sparseloco:7:0.3",
    "sparse:48/4096+2bit@sparseloco:5:0.6",
    "sparse:40/4096+2bit@sparseloco:5:0.6",
    "sparse:32/4096+2bit@sparseloco:4:0.6",
    "sparse:32/4096+2bit@sparseloco:5:0.5",
    "sparse:32/4096+2bit@sparseloco:5:0.4",
    "sparse:32/4096+2bit@sparseloco:6:0.5",
    "sparse:40/4096+2bit@sparseloco:5:0.5",
    "sparse:48/4096+2bit@sparseloco:5:0.5",
    "sparse:48/4096+2bit@sparseloco:3:0.5",
    "sparse:48/4096+2bit@sparseloco:4:0.5",
    "sparse:54/4096+2bit@sparseloco:3.5:0.5",
    "lowrank:4@sparseloco:1:0.9",
    "lowrank:4@sparseloco:1:1",
    "lowrank:2@sparseloco:1:0.9",
    "lowrank:8+4bit@sparseloco:1:0.9",
    "lowrank:8+4bit@sparseloco:1:0.95",
    "lowrank:8+4bit@sparseloco:1:0.99",
]


def parse_config(text):
    codec, _, outer = text.partition("@")
    if not outer:
        return codec, None
    parts = outer.split(":")
    if parts[0] not in ("momentum", "sparseloco") or not 2 <= len(parts) <= 3:
        sys.exit(f"config {text!r}: the outer step is @momentum:LR[:MOMENTUM] or @sparseloco:LR[:DECAY]")
    return codec, (parts[0], float(parts[1]), float(parts[2]) if len(parts) == 3 else None)


def set_key(toml, section, key, value):
    """Sets `key = value` in `[section]` (at the top when section is None),
    adding the key at the top of the section when it is not there."""
    lines = toml.split("\n")
    current, start = None, 0
    for i, line in enumerate(lines):
        header = re.match(r"^\[(.+)\]\s*$", line)
        if header:
            current = header.group(1)
            if current == section:
                start = i + 1
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines)
    if section is not None and start == 0:
        sys.exit(f"the spec has no [{section}]: `starling spec new` changed; update this script")
    lines.insert(start, f"{key} = {value}")
    return "\n".join(lines)


def write_spec(args, codec, outer, path):
    subprocess.run(
        [args.starling, "-q", "spec", "new", "--model", args.model, "--data", f"text:{args.text}",
         "--codec", codec, "--out", path],
        check=True, cwd=args.out)
    toml = open(path).read()
    for key, value in (("d_model", args.d_model), ("heads", args.heads), ("layers", args.layers)):
        if value is not None:
            toml = set_key(toml, "model", key, value)
    toml = set_key(toml, "inner", "steps", args.steps)
    toml = set_key(toml, "inner", "batch_size", args.batch)
    if outer is not None:
        rule, lr, extra = outer
        toml = set_key(toml, "outer", "rule", f'"{rule}"')
        toml = set_key(toml, "outer", "lr", lr)
        if rule == "momentum":
            toml = set_key(toml, "outer", "momentum", extra if extra is not None else 0.9)
        else:
            toml = set_key(toml, "outer", "momentum", 0.0)
            toml = set_key(toml, "outer", "nesterov", "false")
            if extra is not None:
                toml = set_key(toml, None, "feedback_decay", extra)
    open(path, "w").write(toml)


_RUNS = {}


def run(args, config):
    """The summary of one config's swarm (run once per process)."""
    if config not in _RUNS:
        _RUNS[config] = run_once(args, config)
    return _RUNS[config]


def run_once(args, config):
    codec, outer = parse_config(config)
    name = re.sub(r"[^A-Za-z0-9.]+", "_", config)
    spec = os.path.join(args.out, f"{name}.toml")
    result = os.path.join(args.out, f"{name}.json")
    if os.path.exists(result) and not args.rerun:
        if not os.path.exists(spec):
            write_spec(args, codec, outer, spec)
        return json.load(open(result)), spec
    write_spec(args, codec, outer, spec)
    started = time.time()
    with open(os.path.join(args.out, f"{name}.log"), "w") as log:
        out = subprocess.run(
            [args.starling, "swarm", "--spec", spec, "--nodes", str(args.nodes), "--rounds", str(args.rounds),
             "--seed", str(args.seed), "--no-baseline", "--json"],
            check=True, cwd=args.out, stdout=subprocess.PIPE, stderr=log, text=True).stdout
    summary = json.loads(out)
    summary["sweep_config"] = config
    summary["sweep_seconds"] = time.time() - started
    with open(result, "w") as f:
        json.dump(summary, f)
    return summary, spec


def outer_of(spec):
    toml = tomllib.load(open(spec, "rb"))
    outer = toml["outer"]
    if outer.get("rule", "momentum") == "sparseloco":
        return f"sparseloco lr {outer['lr']} β {toml.get('feedback_decay', '-')}"
    return f"momentum lr {outer['lr']} μ {outer['momentum']}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", help="the natural-language text file to train on")
    p.add_argument("--model", default="lm-small", help="a GPT preset of `starling spec new --model`")
    p.add_argument("--d-model", type=int, help="override the preset's d_model")
    p.add_argument("--heads", type=int, help="override the preset's heads")
    p.add_argument("--layers", type=int, help="override the preset's layers")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="inner steps per round")
    p.add_argument("--batch", type=int, default=4, help="windows per inner step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--configs", help="comma-separated configs (see above); the reference is always run first")
    p.add_argument("--reference", default="dense",
                   help="the dense config whose bytes the ratios are against (default: dense with its own outer step)")
    p.add_argument("--out", default="target/lm-sweep", help="where specs, logs and each run's JSON go")
    p.add_argument("--starling", default=os.path.abspath("target/release/starling"))
    p.add_argument("--rerun", action="store_true", help="run configs whose JSON is already in --out again")
    p.add_argument("--list", action="store_true", help="print the default grid and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(DEFAULT_GRID))
        return
    if not args.text or not os.path.isfile(args.text):
        sys.exit("--text FILE is required: a natural-language text file (e.g. the fortunes of Debian's fortunes packages)")
    args.text = os.path.abspath(args.text)
    args.starling = os.path.abspath(args.starling)
    os.makedirs(args.out, exist_ok=True)
    configs = args.configs.split(",") if args.configs else DEFAULT_GRID
    # Dense configs first: the loss of every config is set against the best of them.
    if not is_dense(args.reference):
        sys.exit(f"--reference {args.reference}: the reference must be a dense config")
    configs = [args.reference] + [c for c in configs if c != args.reference]
    configs = [c for c in configs if is_dense(c)] + [c for c in configs if not is_dense(c)]

    dense, _ = run(args, args.reference)
    best_dense = min((run(args, c)[0]["mean_loss"] for c in configs if is_dense(c)))
    print(f"{dense['model']}, {dense['params']:,} parameters, {args.nodes} nodes × {args.rounds} rounds of "
          f"{args.steps} steps × {args.batch} windows; held-out loss initially {dense['initial_loss']:.4f}, "
          f"{best_dense:.4f} after the best dense config")
    print()
    print("| config | outer step | sent per node per round | vs dense | held-out loss | vs best dense | consensus |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for config in configs:
        s, spec = run(args, config)
        ratio = dense["bytes_sent_per_node_per_round"] / s["bytes_sent_per_node_per_round"]
        loss_ratio = s["mean_loss"] / best_dense
        print(f"| `{s['codec']}` | {outer_of(spec)} | {s['bytes_sent_per_node_per_round'] / 1024:,.1f} KiB | "
              f"{ratio:,.1f}× | {s['mean_loss']:.4f} (ppl {math.exp(s['mean_loss']):.0f}) | "
              f"{100 * (loss_ratio - 1):+.2f} % | {s['consensus_distance']:.1e} |", flush=True)
        with open(os.path.join(args.out, "rows.jsonl"), "a") as f:
            f.write(json.dumps({
                "config": config, "codec": s["codec"], "outer": outer_of(spec), "params": s["params"],
                "bytes_sent_per_node_per_round": s["bytes_sent_per_node_per_round"],
                "ratio_vs_dense": ratio, "eval_loss": s["mean_loss"], "eval_loss_ratio_vs_best_dense": loss_ratio,
                "curve": [c["eval_loss"] for c in s["curve"]],
            }) + "\n")


def is_dense(config):
    return parse_config(config)[0] == "dense"


if __name__ == "__main__":
    main()
