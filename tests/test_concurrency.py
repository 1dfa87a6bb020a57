"""Kernels run with the GIL released; concurrent calls and thread-count changes are safe."""

import threading

import numpy as np

import cnorm


def _work(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 16, 24, 24)).astype(np.float32)
    h = rng.standard_normal((256, 300))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    return x, h, dy


def _run(x, h, dy):
    f = cnorm.batch_norm_forward(x, method="welford")
    g = cnorm.batch_norm_backward(dy, x, f.mean, f.invstd)
    lf = cnorm.layer_norm_forward(h, 300)
    lg = cnorm.layer_norm_backward(h, h, lf.mean, lf.rstd)
    return [f.y, f.mean, f.invstd, g.dx, g.dweight, lf.y, lf.rstd, lg.dx, lg.dweight]


def test_eight_python_threads_get_the_single_threaded_results():
    inputs = [_work(seed) for seed in range(8)]
    expected = [_run(*args) for args in inputs]
    failures = []

    def worker(i):
        for _ in range(15):
            got = _run(*inputs[i])
            if not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, expected[i])):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_kernels_release_the_gil():
    # While one Python thread is inside a long kernel call, another one keeps running.
    x = np.random.default_rng(0).standard_normal((64, 64, 64, 64)).astype(np.float32)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        before = len(ticks)
        for _ in range(3):
            cnorm.batch_norm_forward(x)
        during = len(ticks) - before
    finally:
        done.set()
        t.join()
    assert during > 100


def test_set_num_threads_from_another_thread_while_kernels_run():
    x, h, dy = _work(0)
    expected = _run(x, h, dy)
    stop = threading.Event()

    def toggler():
        n = 1
        while not stop.is_set():
            cnorm.set_num_threads(n)
            n = n % 4 + 1

    t = threading.Thread(target=toggler)
    t.start()
    try:
        for _ in range(40):
            got = _run(x, h, dy)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    finally:
        stop.set()
        t.join()
