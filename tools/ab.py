"""A/B timing of two builds of cnorm, in alternating processes.

    python tools/ab.py OLD_TREE NEW_TREE [--rounds 5] [--op bn_train,...] [--dtype float32]

Each tree is a source checkout with its extensions built in place
(``python setup.py build_ext --inplace``); for the old one, ``git worktree add
/tmp/old <commit>`` and build there.  Every round runs one process per tree,
in turn (old, new, new, old, ...), and each process times cnorm's call of
every case of ``python -m cnorm.bench`` (no NumPy or torch), as the benchmark
does.  The report gives, per case, the median over rounds of each tree's
median, and new / old: below 1 is faster.  Alternating processes spreads the
machine's drift (and its memory-bandwidth modes) over both builds alike.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np
import cnorm
from cnorm import bench
ops, dtypes, min_time = sys.argv[1].split(","), sys.argv[2].split(","), float(sys.argv[3])
out = {}
for op, shape, axis, dtype in bench.cases(ops, dtypes):
    rng = np.random.default_rng(0)
    funcs, _ = bench._case(op, shape, axis, dtype, None, None,
                           cnorm.get_num_threads(), rng)
    med = bench.measure({"cnorm": funcs["cnorm"]}, min_time=min_time, rounds=5)["cnorm"]
    out[bench._fmt_case(op, shape, axis, dtype)] = med
print(json.dumps(out))
"""


def run_tree(tree, ops, dtypes, min_time):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    res = subprocess.run([sys.executable, "-c", CHILD, ops, dtypes, str(min_time)], env=env,
                         capture_output=True, text=True, check=True, cwd=os.path.abspath(tree))
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--op", default=",".join(
        ("bn_train", "bn_infer", "bn_backward", "ln_forward", "ln_backward", "gn_forward",
         "gn_backward", "gn_silu", "in_forward", "in_backward", "rms_forward", "rms_backward")))
    p.add_argument("--dtype", default="float32,float64")
    p.add_argument("--min-time", type=float, default=0.01,
                   help="seconds per sample (default 0.01)")
    a = p.parse_args(argv)
    runs = {"old": [], "new": []}
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for which in order:
            runs[which].append(run_tree(getattr(a, which), a.op, a.dtype, a.min_time))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"{'case':44s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}")
    ratios = []
    for case in runs["old"][0]:
        old = statistics.median(x[case] for x in runs["old"])
        new = statistics.median(x[case] for x in runs["new"])
        ratios.append(new / old)
        print(f"{case:44s} {old * 1e3:9.4f} {new * 1e3:9.4f} {new / old:8.3f}")
    print(f"median new/old over {len(ratios)} cases: {statistics.median(ratios):.3f}; "
          f"max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
