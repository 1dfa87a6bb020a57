"""Many calls on small arrays do not grow memory (tracemalloc and resident set size)."""

import os
import tracemalloc

import numpy as np

import cnorm

CALLS = 100_000   # per function


def _rss_kib():
    """Current resident set size (not the peak), in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_no_growth_over_many_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    h = rng.standard_normal((2, 16)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    f = cnorm.batch_norm_forward(x)
    lf = cnorm.layer_norm_forward(h, 16)
    calls = [
        lambda: cnorm.batch_norm(x, None, None, rm, rv, training=True),
        lambda: cnorm.batch_norm(x, None, None, rm, rv),
        lambda: cnorm.batch_norm_forward(x),
        lambda: cnorm.batch_norm_backward(x, x, f.mean, f.invstd),
        lambda: cnorm.layer_norm(h, 16),
        lambda: cnorm.layer_norm_forward(h, 16),
        lambda: cnorm.layer_norm_backward(h, h, lf.mean, lf.rstd),
    ]
    for call in calls:   # warm up caches, interned objects, allocator pools
        for _ in range(1000):
            call()
    tracemalloc.start()
    rss0 = _rss_kib()
    snap0 = tracemalloc.take_snapshot()
    for call in calls:
        for _ in range(CALLS):
            call()
    snap1 = tracemalloc.take_snapshot()
    rss1 = _rss_kib()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    # Python objects: a leak of even 8 bytes per call would be 5.6 MB.
    assert grown < 200_000, grown
    # C scratch memory (invisible to tracemalloc): kernels allocate a few hundred
    # bytes per call, so leaking them would add tens of MB.
    assert rss1 - rss0 < 4096, (rss0, rss1)
