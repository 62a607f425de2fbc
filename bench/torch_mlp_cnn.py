"""PyTorch's side of bench/torch_vs_candle.sh: samples per second of a training
step loop (batch sampling, forward, cross-entropy, backward, AdamW) for the same
MLP and CNN as `starling bench train`, on random 28x28 inputs."""

import argparse
import json
import time

import torch
import torch.nn as nn


def model_for(name):
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    n = 4096
    xs = torch.rand(n, 784)
    ys = torch.arange(n) % 10
    model = model_for(a.model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        idx = torch.randint(0, n, (a.batch,))
        loss = loss_fn(model(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(10):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = time.perf_counter() - t
    print(json.dumps({"model": a.model, "threads": a.threads, "batch": a.batch, "steps": a.steps,
                      "seconds": secs, "samples_per_second": a.steps * a.batch / secs,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
