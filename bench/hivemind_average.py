#!/usr/bin/env python3
"""hivemind's DecentralizedAverager on the same job as `starling bench average`:
two peers on loopback average a 10M-float fp32 tensor, once a round. Not part
of CI; the dense path's figures in the README set Starling against it.

    python3.11 -m venv /tmp/hm && /tmp/hm/bin/pip install "torch==2.2.*" "numpy<2" hivemind==1.1.12
    /tmp/hm/bin/python bench/hivemind_average.py --params 10000000 --rounds 5
    target/release/starling bench average --params 10000000 --rounds 5 --json   # right after, on the same machine

Each round both peers ask for a step at once; the group forms (hivemind's
matchmaking, with its own minimum wait) and then waits for a trigger, so the
clock runs only over the all-reduce itself: each peer sends the other half
of the tensor, the halves are averaged, and each gets the averaged half
back. That is the part `starling bench average` times as encode, transfer,
verify and merge (its peers need no matchmaking). One JSON line per run:
the seconds of each round's all-reduce, their mean, and what the whole
step took with matchmaking.
"""

import argparse
import json
import threading
import time

import hivemind
import torch
from hivemind.averaging.control import AveragingStage


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, default=10_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    dht_a = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    dht_b = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                         initial_peers=dht_a.get_visible_maddrs())
    averagers = [
        hivemind.averaging.DecentralizedAverager(
            averaged_tensors=[torch.randn(args.params)],
            dht=dht,
            prefix="starling-bench",
            target_group_size=2,
            min_group_size=2,
            min_matchmaking_time=1.0,
            request_timeout=0.5,
            start=True,
        )
        for dht in (dht_a, dht_b)
    ]

    allreduce, whole = [], []
    for round_ in range(args.rounds):
        started = time.perf_counter()
        controls = [a.step(wait=False, require_trigger=True, timeout=60) for a in averagers]
        deadline = time.monotonic() + 60
        while any(c.stage != AveragingStage.AWAITING_TRIGGER for c in controls):
            if time.monotonic() > deadline:
                raise SystemExit(f"round {round_ + 1}: the two peers formed no group within 60 s "
                                 f"(stages: {[c.stage.name for c in controls]})")
            if any(c.done() for c in controls):
                raise SystemExit(f"round {round_ + 1}: a step ended before its all-reduce: "
                                 f"{[c.exception() for c in controls if c.done()]}")
            time.sleep(0.001)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=c.allow_allreduce) for c in controls]
        for t in threads:
            t.start()
        for c in controls:
            if c.result(timeout=60) is None:
                raise SystemExit(f"round {round_ + 1}: the all-reduce failed")
        t1 = time.perf_counter()
        allreduce.append(t1 - t0)
        whole.append(t1 - started)

    print(json.dumps({
        "system": f"hivemind {hivemind.__version__}",
        "params": args.params,
        "rounds": args.rounds,
        "allreduce_seconds": allreduce,
        "mean_seconds": sum(allreduce) / len(allreduce),
        "min_seconds": min(allreduce),
        "max_seconds": max(allreduce),
        "step_with_matchmaking_seconds": whole,
        # Each peer sends the other its half (2 bytes a parameter) and the
        # averaged half it holds back (2 more): 4 bytes a parameter, as a
        # dense Starling delta.
        "sent_mb_per_s_per_peer": 4 * args.params / (sum(allreduce) / len(allreduce)) / 1e6,
    }))
    for a in averagers:
        a.shutdown()
    dht_a.shutdown()
    dht_b.shutdown()


if __name__ == "__main__":
    main()
