"""Where a call's thread count comes from: set_num_threads, OpenMP's own setting
(OMP_NUM_THREADS, threadpoolctl), and the per-thread cap cnorm.dask uses."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import cnorm
from cnorm import _openmp

from conftest import threads

BIG = 1 << 24        # work large enough for every thread
needs_openmp = pytest.mark.skipif(not cnorm.openmp_enabled(), reason="this build has no OpenMP")


def test_follows_openmp_until_set():
    cnorm.set_num_threads(None)
    assert _openmp.explicit_threads() is None
    assert cnorm.get_num_threads() >= 1
    if cnorm.openmp_enabled():
        cnorm.set_num_threads(3)
        assert _openmp.explicit_threads() == 3
        assert cnorm.get_num_threads() == 3 == _openmp.planned_threads(BIG)
    cnorm.set_num_threads(None)
    assert _openmp.explicit_threads() is None


@needs_openmp
def test_threadpoolctl_limit_reaches_the_kernels():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cnorm.set_num_threads(None)
    outside = cnorm.get_num_threads()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert cnorm.get_num_threads() == 1
        assert _openmp.planned_threads(BIG) == 1
        x = np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)
        inside = cnorm.layer_norm(x, 4096)
    assert cnorm.get_num_threads() == outside
    if outside > 1:
        assert _openmp.planned_threads(BIG) == outside
    # same bits whatever the count
    np.testing.assert_array_equal(inside, cnorm.layer_norm(x, 4096))


@needs_openmp
def test_explicit_count_wins_over_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threads(2):
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert cnorm.get_num_threads() == 2
            assert _openmp.planned_threads(BIG) == 2
        cnorm.set_num_threads(None)
        with threadpoolctl.threadpool_limits(1, user_api="openmp"):
            assert cnorm.get_num_threads() == 1


@needs_openmp
def test_omp_num_threads_is_read():
    env = dict(os.environ, OMP_NUM_THREADS="3")
    code = ("import cnorm; from cnorm import _openmp; "
            "print(cnorm.get_num_threads(), _openmp.planned_threads(1 << 24), "
            "_openmp.explicit_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.split() == ["3", "3", "None"]


@needs_openmp
def test_local_cap_is_per_thread():
    with threads(2):
        seen = {}

        def worker():
            previous = _openmp.set_local_threads(1)
            try:
                seen["inside"] = (cnorm.get_num_threads(), _openmp.planned_threads(BIG))
            finally:
                _openmp.set_local_threads(previous)
            seen["after"] = cnorm.get_num_threads()

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert seen == {"inside": (1, 1), "after": 2}
        assert _openmp.local_threads() is None
        assert cnorm.get_num_threads() == 2
        # a cap wins over an explicit count in its own thread
        previous = _openmp.set_local_threads(3)
        try:
            assert cnorm.get_num_threads() == 3
        finally:
            _openmp.set_local_threads(previous)
        assert cnorm.get_num_threads() == 2


def test_set_num_threads_none_and_errors():
    for bad, exc in ((0, ValueError), (-2, ValueError), (True, TypeError), (2.0, TypeError),
                     ("2", TypeError)):
        before = _openmp.explicit_threads()
        with pytest.raises(exc, match="n must"):
            cnorm.set_num_threads(bad)
        assert _openmp.explicit_threads() == before


# ---------------------------------------------------------------------------
# Backing off from a busy core (a thread that lost its core holds up a parallel call)
# ---------------------------------------------------------------------------

KIND = 15       # a kind no kernel reports: each kind learns its own usual time


@pytest.fixture
def adaptive():
    was = _openmp.adaptive_state()[0]
    _openmp.set_adaptive(True)
    yield
    _openmp.set_adaptive(was)


@needs_openmp
def test_a_held_up_call_makes_the_next_ones_use_a_thread_fewer(adaptive):
    x = np.random.default_rng(1).standard_normal((16, 4096)).astype(np.float32)
    reference = cnorm.layer_norm(x, 4096)
    with threads(2):
        work = 1 << 20
        for _ in range(5):                                  # usual: 0.1 ms
            _openmp.record_call(KIND, 2, work, 1e-4)
        assert _openmp.planned_threads(work) == 2
        _openmp.record_call(KIND, 2, work, 4e-3)            # held up 40 times as long
        enabled, stalls, window, _ = _openmp.adaptive_state()
        assert (enabled, stalls) == (True, 1) and window == pytest.approx(2e-3)
        # each further stall makes the window 4x as long; at 32 ms the checks below cannot
        # outlast it on a busy host (a few ms could: a preempted test read 2 threads)
        for k in (2, 3):
            _openmp.record_call(KIND, 2, work, 4e-3)
            assert _openmp.adaptive_state()[1:3] == (k, pytest.approx(2e-3 * 4 ** (k - 1)))
        assert _openmp.adaptive_state()[3] is True
        assert _openmp.planned_threads(work) == 1
        assert cnorm.get_num_threads() == 2                 # the setting itself is unchanged
        np.testing.assert_array_equal(cnorm.layer_norm(x, 4096), reference)
        # the window ends, and calls use both threads again
        import time
        time.sleep(0.1)
        assert _openmp.adaptive_state()[3] is False
        assert _openmp.planned_threads(work) == 2


@needs_openmp
def test_the_window_grows_to_four_seconds_at_most(adaptive):
    with threads(2):
        work = 1 << 20
        for _ in range(5):
            _openmp.record_call(KIND, 2, work, 1e-4)
        windows = []
        for _ in range(8):
            _openmp.record_call(KIND, 2, work, 4e-3)
            windows.append(_openmp.adaptive_state()[2])
        assert windows == pytest.approx([2e-3, 8e-3, 32e-3, 0.128, 0.512, 2.048, 4.0, 4.0])
        assert _openmp.planned_threads(work) == 1


@needs_openmp
def test_a_first_call_held_up_does_not_hide_the_later_stalls(adaptive):
    """The usual time starts as the fastest of the first calls: a neighbour busy from
    the start holds up the first call, and a moving average begun there would take
    later stalls of the same length for usual ones."""
    with threads(2):
        work = 1 << 20
        _openmp.record_call(KIND, 2, work, 4e-3)            # held up: nothing learnt yet
        for _ in range(3):
            _openmp.record_call(KIND, 2, work, 1e-4)        # the usual time
        assert _openmp.adaptive_state()[1] == 0
        _openmp.record_call(KIND, 2, work, 4e-3)            # held up again: a stall now
        assert _openmp.adaptive_state()[1] == 1
        assert _openmp.planned_threads(work) == 1


@needs_openmp
def test_ordinary_calls_do_not_back_off(adaptive):
    with threads(2):
        work = 1 << 20
        rng = np.random.default_rng(2)
        for t in 1e-4 * (1 + 0.5 * rng.random(50)):          # noisy, but never 4x the usual
            _openmp.record_call(KIND, 2, work, float(t))
        _openmp.record_call(KIND, 2, work, 3e-4)           # 3x: not a stall
        _openmp.record_call(KIND, 2, 1 << 10, 4e-4)        # short calls: under 0.5 ms
        assert _openmp.adaptive_state()[1] == 0
        assert _openmp.planned_threads(work) == 2


@needs_openmp
def test_each_dtype_and_activation_learns_its_own_usual_time(adaptive):
    """A float64 SiLU pass costs more than 4x a float32 plain one per value: after
    float32 calls it is no stall, while a float32 call held up as long is."""
    with threads(2):
        work = 1 << 20
        for _ in range(5):
            _openmp.record_call(KIND, 2, work, 1e-4)                 # float32, no activation
        _openmp.record_call(KIND, 2, work, 6e-4, dtype=1, act=2)     # float64, SiLU
        _openmp.record_call(KIND, 2, work, 6e-4, dtype=1, act=2)
        assert _openmp.adaptive_state()[1] == 0
        _openmp.record_call(KIND, 2, work, 6e-4)                     # float32 again: held up
        assert _openmp.adaptive_state()[1] == 1


@needs_openmp
def test_back_off_can_be_turned_off(adaptive):
    _openmp.set_adaptive(False)
    with threads(2):
        _openmp.record_call(KIND, 2, 1 << 20, 1e-4)
        _openmp.record_call(KIND, 2, 1 << 20, 1e-2)
        assert _openmp.adaptive_state() == (False, 0, 0.0, False)
        assert _openmp.planned_threads(1 << 20) == 2
    env = dict(os.environ, CNORM_ADAPTIVE_THREADS="0")
    out = subprocess.run([sys.executable, "-c", "from cnorm import _openmp; "
                          "print(_openmp.adaptive_state()[0])"], env=env, capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(__file__))
    assert out.stdout.strip() == "False"


@needs_openmp
def test_a_real_kernel_call_is_timed(adaptive):
    # the shims report their calls: a usual time is learnt, and no stall on a quiet call
    with threads(2):
        x = np.random.default_rng(3).standard_normal((64, 64, 64)).astype(np.float32)
        for _ in range(3):
            cnorm.batch_norm(x, training=True)
        before = _openmp.adaptive_state()[1]
        _openmp.record_call(0, 2, x.size, 1.0)           # batch-norm training's kind: 1 s
        assert _openmp.adaptive_state()[1] == before + 1


def _cgroup(tmp_path, v2=None, v1=None):
    proc = tmp_path / "cgroup"
    if v2 is not None:
        (tmp_path / "fs" / "job").mkdir(parents=True)
        (tmp_path / "fs" / "job" / "cpu.max").write_text(v2)
        proc.write_text("0::/job\n")
    else:
        d = tmp_path / "fs" / "cpu,cpuacct" / "job"
        d.mkdir(parents=True)
        (d / "cpu.cfs_quota_us").write_text(v1[0])
        (d / "cpu.cfs_period_us").write_text(v1[1])
        proc.write_text("4:memory:/job\n2:cpu,cpuacct:/job\n")
    return _openmp.cgroup_cpu_limit(str(tmp_path / "fs"), str(proc))


def test_cgroup_cpu_quota_is_read(tmp_path):
    assert _cgroup(tmp_path / "a", v2="150000 100000\n") == 2
    assert _cgroup(tmp_path / "b", v2="max 100000\n") is None
    assert _cgroup(tmp_path / "c", v1=("50000\n", "100000\n")) == 1
    assert _cgroup(tmp_path / "d", v1=("-1\n", "100000\n")) is None
    assert _openmp.cgroup_cpu_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


@needs_openmp
def test_default_threads_follow_the_quota_unless_set():
    cnorm.set_num_threads(None)
    try:
        _openmp._set_default_cap(1)
        assert cnorm.get_num_threads() == 1 and _openmp.planned_threads(BIG) == 1
        with threads(2):
            assert cnorm.get_num_threads() == 2             # an explicit count wins
    finally:
        _openmp._set_default_cap()
