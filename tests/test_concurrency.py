"""Kernels run with the GIL released; concurrent calls and thread-count changes are safe."""

import ctypes
import ctypes.util
import threading
import time

import numpy as np
import pytest

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


def _stall_and_duration(fn):
    """The longest stretch of fn's call in which another Python thread could not run,
    and the call's duration, both in seconds.

    A ticker thread records the time at each step; the call runs on one OpenMP thread so
    that the ticker has a core of its own.
    """
    stamps = []
    done = threading.Event()
    clock = time.perf_counter

    def ticker():
        while not done.is_set():
            stamps.append(clock())

    threads = cnorm.get_num_threads()
    cnorm.set_num_threads(1)
    t = threading.Thread(target=ticker)
    t.start()
    try:
        while not stamps:                # the ticker is running before the call starts
            time.sleep(1e-4)
        t0 = clock()
        fn()
        t1 = clock()
    finally:
        done.set()
        t.join()
        cnorm.set_num_threads(threads)
    inside = [t0] + [s for s in stamps if t0 < s < t1] + [t1]
    return max(b - a for a, b in zip(inside, inside[1:])), t1 - t0


def _longest_stall(fn):
    """The longest stall as a fraction of the call's duration (near 1 when fn holds the
    GIL throughout)."""
    stall, duration = _stall_and_duration(fn)
    return stall / duration


def test_the_gil_probe_tells_a_held_gil_from_a_released_one():
    # Stand-ins: ctypes' PyDLL keeps the GIL during a foreign call, CDLL releases it.
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to call through ctypes")
    held, released = ctypes.PyDLL(libc).usleep, ctypes.CDLL(libc).usleep
    # Held: no other thread runs during the whole 0.1 s sleep. Measured in seconds, not as a
    # fraction of the call, because handing the GIL back and forth around the foreign call
    # takes up to a switch interval (5 ms) on each side, more on a busy machine.
    stall, _ = _stall_and_duration(lambda: held(100_000))
    assert stall >= 0.095
    assert _longest_stall(lambda: released(100_000)) < 0.25


@pytest.fixture(scope="module")
def long_call_inputs():
    # The calls must be long next to the time a sleeping thread takes to wake on this host (up
    # to a few ms): at 33 MB a moments call took 1.5 ms, often before the other thread woke.
    x = np.random.default_rng(0).standard_normal((32, 64, 128, 128), dtype=np.float32)
    return x, cnorm.batch_norm_forward(x), cnorm.layer_norm_forward(x, (128, 128))


@pytest.mark.parametrize("call", ["batch_norm_forward", "batch_norm_backward",
                                  "layer_norm_forward", "layer_norm_backward", "batch_norm",
                                  "moments-columns", "moments-planes", "moments-samples"])
def test_kernels_release_the_gil(call, long_call_inputs):
    # While one Python thread is inside a long kernel call, another one keeps running.
    x, f, lf = long_call_inputs
    ones = np.ones(64, np.float32)
    calls = {
        "batch_norm_forward": lambda: cnorm.batch_norm_forward(x),
        "batch_norm_backward": lambda: cnorm.batch_norm_backward(x, x, f.mean, f.invstd),
        "layer_norm_forward": lambda: cnorm.layer_norm_forward(x, (128, 128)),
        "layer_norm_backward": lambda: cnorm.layer_norm_backward(x, x, lf.mean, lf.rstd),
        "batch_norm": lambda: cnorm.batch_norm(x, ones, None, f.mean, ones),
        "moments-columns": lambda: cnorm.moments(x, (0, 1, 2)),
        "moments-planes": lambda: cnorm.moments(x, (0, 2, 3)),
        "moments-samples": lambda: cnorm.moments(x, (1, 2)),
    }
    stall = min(_longest_stall(calls[call]) for _ in range(3))   # robust to a busy machine
    assert stall < 0.5, f"{call}: other threads were held up for {stall:.0%} of the call"


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
