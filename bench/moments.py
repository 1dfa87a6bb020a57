"""cnorm.moments against NumPy's mean + var and torch.var_mean (when installed), float32.

    python bench/moments.py [--repeat 7]

Each figure is the median of `repeat` timings of a few calls; the ratios are
the others' medians over cnorm's, measured in the same run.
"""

import argparse
import statistics
import timeit

import numpy as np

import cnorm

CASES = [((250_000, 64), 0), ((4096, 768), 1), ((32, 64, 56, 56), (0, 2, 3))]


def median_ms(f, number, repeat):
    return statistics.median(timeit.repeat(f, number=number, repeat=repeat)) / number * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    a = p.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(cnorm.get_num_threads())
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"cnorm {cnorm.__version__}, {cnorm.get_num_threads()} threads")
    for shape, axis in CASES:
        x = rng.standard_normal(shape, dtype=np.float32) + 100
        n = 3 if x.size > 5e6 else 10
        c = median_ms(lambda: cnorm.moments(x, axis), n, a.repeat)
        npy = median_ms(lambda: (x.mean(axis=axis), x.var(axis=axis)), n, a.repeat)
        line = (f"{str(shape):18s} axis={str(axis):10s} cnorm {c:8.3f} ms   numpy mean+var "
                f"{npy:8.3f} ms ({npy / c:5.1f}x)")
        if torch is not None:
            tx = torch.from_numpy(x)
            t = median_ms(lambda: torch.var_mean(tx, dim=axis, correction=0), n, a.repeat)
            line += f"   torch.var_mean {t:8.3f} ms ({t / c:5.1f}x)"
        print(line)


if __name__ == "__main__":
    main()
