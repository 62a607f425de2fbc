#!/usr/bin/env bash
# GPU speedup of the node's trainer: `starling bench train` on the CPU and on
# cuda:0 (a starling built with `--features cuda`), next to PyTorch on the same
# GPU, for the MLP and the CNN at a small and a large batch. Not part of CI.
#
#   STARLING=path/to/starling bench/gpu_speedup.sh
#
# CUDA libraries (cuBLAS, cuRAND, NVRTC) are found through LD_LIBRARY_PATH; on
# a machine whose CUDA came with PyTorch's pip wheels, the script adds theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
STARLING=${STARLING:-target/release/starling}
STEPS=${STEPS:-200}
THREADS=${THREADS:-$(nproc)}
if python3 -c "import nvidia" 2>/dev/null; then
    libs=$(python3 - <<'PY'
import glob, os, nvidia
print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "**", "lib*.so*"), recursive=True)})))
PY
)
    export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true

torch_run() { # model batch device
    python3 - "$1" "$2" "$3" "$STEPS" "$THREADS" <<'PY'
import json, sys, time
import torch, torch.nn as nn
sys.path.insert(0, "bench")
from torch_mlp_cnn import model_for
name, batch, device, steps, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(1)
n = 4096
xs, ys = torch.rand(n, 784, device=device), (torch.arange(n) % 10).to(device)
model = model_for(name).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
loss_fn = nn.CrossEntropyLoss()
def step():
    idx = torch.randint(0, n, (batch,), device=device)
    loss = loss_fn(model(xs[idx]), ys[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()  # the node reads every step's loss too
for _ in range(10):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
secs = time.perf_counter() - t
print(json.dumps({"samples_per_second": steps * batch / secs}))
PY
}

printf "| model | batch | candle cpu (%s threads) | candle cuda:0 | torch cuda | candle cuda / cpu | candle cuda / torch cuda |\n" "$THREADS"
printf "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
for model in mlp cnn; do
    for batch in 64 1024; do
        cpu=$("$STARLING" bench train --model "$model" --threads "$THREADS" --batch "$batch" --steps "$STEPS" --json)
        gpu=$("$STARLING" bench train --model "$model" --device cuda:0 --batch "$batch" --steps "$STEPS" --json)
        tg=$(torch_run "$model" "$batch" cuda)
        python3 - "$model" "$batch" "$cpu" "$gpu" "$tg" <<'PY'
import json, sys
m, b = sys.argv[1], sys.argv[2]
c, g, t = (json.loads(a)["samples_per_second"] for a in sys.argv[3:6])
print(f"| {m} | {b} | {c:,.0f} | {g:,.0f} | {t:,.0f} | {g / c:.2f}x | {g / t:.2f}x |")
PY
    done
done
