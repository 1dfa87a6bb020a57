"""Fixtures and helpers shared by the cnorm test-suite."""

import contextlib
import zlib

import numpy as np
import pytest

import cnorm
from cnorm import _openmp

# Tolerances of assert_close, per dtype: (rtol, atol relative to the scale of
# the expected values).  cnorm accumulates in float64 whatever the dtype, so
# float32 results are off by a few float32 roundings of the final formula.
TOLERANCES = {
    np.dtype(np.float32): (2e-5, 2e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}


def tolerances(dtype):
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype, rtol=None, atol=None, err_msg=""):
    """assert_allclose with tolerances suited to ``dtype``.

    ``atol`` is relative to the scale of ``expected`` (its largest finite
    magnitude, at least 1), so that values near zero in an array of larger
    ones are judged on the array's scale.  NaNs must match NaNs.
    """
    rt, at = tolerances(dtype)
    rtol = rt if rtol is None else rtol
    atol = at if atol is None else atol
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol * scale, equal_nan=True, err_msg=err_msg)


@contextlib.contextmanager
def threads(n):
    """Run a block with cnorm.set_num_threads(n), restoring the previous state (an
    explicit count, or following OpenMP's setting)."""
    previous = _openmp.explicit_threads()
    cnorm.set_num_threads(n)
    try:
        yield n
    finally:
        cnorm.set_num_threads(previous)


def channel_data(rng, shape, axis=1, dtype=np.float64, offset=2.0, spread=1.5):
    """Random data whose channels have different means and standard deviations."""
    shape = tuple(shape)
    ndim = len(shape)
    ax = axis % ndim
    c = shape[ax]
    bshape = [1] * ndim
    bshape[ax] = c
    mu = rng.uniform(-offset, offset, size=c).reshape(bshape)
    sd = rng.uniform(1.0 / spread, spread, size=c).reshape(bshape)
    return (rng.standard_normal(shape) * sd + mu).astype(dtype)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id: reproducible, different per test."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """No test leaks a thread-count change into the next one, nor a back-off from a core
    that was busy during an earlier test (see tests/test_threads.py)."""
    _openmp.set_adaptive(_openmp.adaptive_state()[0])     # forget learnt times and back-off
    previous = _openmp.explicit_threads()
    yield
    cnorm.set_num_threads(previous)


def count_calls(monkeypatch, module, name="_forward"):
    """Wrap module.name so that each call appends to the returned list (to tell a
    fast path from the general one)."""
    calls = []
    original = getattr(module, name)

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(module, name, counting)
    return calls


def count_general(monkeypatch, *modules):
    """Count the calls that reach the general path of the ops of `modules`: each one's
    first check is float_array, which no fast path calls.  Returns the list each such
    call appends to."""
    calls = []
    for module in modules:
        original = module.float_array

        def counting(*args, _original=original, **kw):
            calls.append(1)
            return _original(*args, **kw)

        monkeypatch.setattr(module, "float_array", counting)
    return calls
