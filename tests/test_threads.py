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
