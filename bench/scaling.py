"""How cnorm's OpenMP kernels scale with the thread count, beside torch's.

    python bench/scaling.py --threads 1,2,4,8,16 [--dtype float32] [--op bn_train,...]

Runs ``python -m cnorm.bench --json`` once per thread count, each in a fresh
process (so that each OpenMP pool starts at its size), and prints per case
cnorm's median time at each count, its speedup over one thread, and its
speedup over torch at the same count.  Each run measures its own cases side
by side; numbers from different runs (thread counts) are compared only as
ratios of medians on the same machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile


def run_bench(threads, dtype, ops, mode):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.json")
        cmd = [sys.executable, "-m", "cnorm.bench", "--threads", str(threads), "--dtype", dtype,
               "--json", path]
        if ops:
            cmd += ["--op", ops]
        if mode != "default":
            cmd.append("--" + mode)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "all"])
    p.add_argument("--op", default=None, help="as for python -m cnorm.bench")
    p.add_argument("--mode", default="default", choices=["quick", "default", "full"])
    p.add_argument("--json", metavar="PATH", help="also write every run's results as JSON")
    a = p.parse_args(argv)
    try:
        counts = [int(t) for t in a.threads.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        p.error(f"--threads must be comma-separated positive integers, e.g. 1,2,4; got {a.threads!r}")
    runs = {}
    for n in counts:
        print(f"threads={n} ...", file=sys.stderr, flush=True)
        runs[n] = run_bench(n, a.dtype, a.op, a.mode)
    meta = runs[counts[0]]["meta"]
    print(f"cnorm {meta.get('cnorm')}, torch {meta.get('torch')}, cpu: {meta.get('cpu')}")
    base = counts[0]
    head = "  ".join(f"{n:>8}" for n in counts)
    print(f"{'case':<40} time (ms) at threads {head}")
    rows = {}
    for n in counts:
        for r in runs[n]["results"]:
            key = (r["op"], tuple(r["shape"]), r["axis"], r["dtype"])
            rows.setdefault(key, {})[n] = r
    for (op, shape, axis, dtype), by_n in rows.items():
        name = f"{op} {dtype} {'x'.join(map(str, shape))}"
        if op.startswith("bn_") and axis != 1:
            name += f" axis={axis}"
        times = "  ".join(f"{by_n[n]['cnorm_s'] * 1e3:8.3f}" if n in by_n else f"{'-':>8}" for n in counts)
        scale = "  ".join(f"{by_n[base]['cnorm_s'] / by_n[n]['cnorm_s']:8.2f}" if n in by_n else f"{'-':>8}"
                          for n in counts)
        torch = "  ".join(f"{by_n[n]['speedup_torch']:8.2f}" if n in by_n and by_n[n].get("speedup_torch")
                          else f"{'-':>8}" for n in counts)
        print(f"{name:<40} time (ms)             {times}")
        print(f"{'':<40} speedup vs {base:<2} thread{'s' if base > 1 else ' '}  {scale}")
        print(f"{'':<40} speedup vs torch       {torch}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(n): runs[n] for n in counts}, f, indent=1)


if __name__ == "__main__":
    main()
