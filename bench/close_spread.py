#!/usr/bin/env python3
"""How far apart the nodes of one run close the same round, read from the node
logs that bench/loop_under_load.sh keeps (one directory of NAME.log files per
run). For each run it takes the widest spread (last close minus first) over
rounds FIRST..LAST that at least four nodes merged, and prints the median and
the largest over the runs. Rounds that all close at the deadline drift apart
when each node's deadline counts from its own publish; a spread near the
deadline means one node closes as another's delta arrives.

    bench/loop_under_load.sh 10 sync_sybil
    bench/close_spread.py '/tmp/loop-sync_sybil/*[0-9]' --rounds 8 11
"""
import argparse
import glob
import os
import re

LINE = re.compile(r"T(\d\d):(\d\d):(\d\d\.\d+)Z .*round merged round=(\d+) ")


def widest_spread(run_dir, first, last):
    closes = {}
    for path in glob.glob(os.path.join(run_dir, "*.log")):
        with open(path) as log:
            for line in log:
                m = LINE.search(line)
                if m and first <= int(m.group(4)) <= last:
                    at = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
                    closes.setdefault(int(m.group(4)), {})[os.path.basename(path)] = at
    spreads = [max(c.values()) - min(c.values()) for c in closes.values() if len(c) >= 4]
    return max(spreads) if spreads else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="glob of run directories")
    parser.add_argument("--rounds", nargs=2, type=int, default=[8, 11], metavar=("FIRST", "LAST"))
    args = parser.parse_args()
    for pattern in args.runs:
        spreads = sorted(
            s for s in (widest_spread(d, *args.rounds) for d in glob.glob(pattern) if os.path.isdir(d)) if s is not None
        )
        if not spreads:
            print(f"{pattern}: no run with four nodes closing rounds {args.rounds[0]}-{args.rounds[1]}")
            continue
        print(
            f"{pattern}: {len(spreads)} runs; widest close spread in rounds {args.rounds[0]}-{args.rounds[1]}: "
            f"median {spreads[len(spreads) // 2]:.3f} s, largest {spreads[-1]:.3f} s"
        )


if __name__ == "__main__":
    main()
