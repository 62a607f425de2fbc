#!/usr/bin/env bash
# Step time of the GPT presets: `starling bench train --model PRESET` on a
# device (cuda:0 by default: a starling built with `--features cuda`) next to
# the same model in PyTorch on the same device: pre-LayerNorm blocks of causal
# self-attention and a tanh-GELU MLP, learned positions, the head tied to the
# token embedding, cross-entropy, AdamW; random token ids of the preset's
# vocabulary, one sample being one window of its context. Not part of CI.
#
#   STARLING=path/to/starling bench/gpu_lm.sh             # cuda:0
#   DEVICE=cpu PRESETS="lm-tiny" bench/gpu_lm.sh           # the same on the CPU
#
# The PyTorch model's parameter count is checked against Starling's before
# anything is timed (the README's preset table), so both train the same model.
set -euo pipefail
cd "$(dirname "$0")/.."
STARLING=${STARLING:-target/release/starling}
DEVICE=${DEVICE:-cuda:0}
STEPS=${STEPS:-10}
PRESETS=${PRESETS:-lm-tiny lm-small gpt2-small}
if python3 -c "import nvidia" 2>/dev/null; then
    libs=$(python3 - <<'PY'
import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True)})))
PY
)
    export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

torch_run() { # preset batch device
    python3 - "$1" "$2" "$3" "$STEPS" <<'PY'
import json, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
preset, batch, device, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# vocab, d_model, heads, layers, context, and Starling's parameter count for it.
sizes = {
    "lm-tiny": (2048, 128, 4, 4, 128, 1_071_872),
    "lm-small": (8192, 256, 8, 8, 256, 8_481_280),
    "gpt2-small": (50257, 768, 12, 12, 1024, 124_439_808),
}
vocab, d, heads, layers, context, expected = sizes[preset]

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList(Block() for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)

    def forward(self, idx, targets):
        x = self.tok_emb(idx) + self.pos_emb[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.tok_emb.weight.t()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

torch.manual_seed(1)
model = Gpt().to(device)
params = sum(p.numel() for p in model.parameters())
if params != expected:
    sys.exit(f"the PyTorch {preset} has {params} parameters, Starling's {expected}: not the same model")
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
tokens = torch.randint(0, vocab, (batch * 16, context + 1), device=device)
def step():
    rows = torch.randint(0, tokens.shape[0], (batch,), device=device)
    window = tokens[rows]
    loss = model(window[:, :-1], window[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()  # the node reads every step's loss too
step()
t = time.perf_counter()
for _ in range(steps):
    step()
secs = time.perf_counter() - t
print(json.dumps({"samples_per_second": steps * batch / secs, "params": params}))
PY
}

sps() { python3 -c "import json,sys; print(round(json.load(sys.stdin)['samples_per_second'], 2))"; }

printf "| preset | batch | candle %s (windows/s) | torch %s (windows/s) | candle / torch |\n" "$DEVICE" "$DEVICE"
printf "| --- | ---: | ---: | ---: | ---: |\n"
for preset in $PRESETS; do
    case $preset in lm-tiny) batch=32 ;; lm-small) batch=8 ;; *) batch=${GPT2_BATCH:-4} ;; esac
    ours=$("$STARLING" bench train --model "$preset" --device "$DEVICE" --batch "$batch" --steps "$STEPS" --json | sps)
    theirs=$(torch_run "$preset" "$batch" "${DEVICE/cuda:0/cuda}" | sps)
    ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}x')")
    printf "| %s | %s | %s | %s | %s |\n" "$preset" "$batch" "$ours" "$theirs" "$ratio"
done
