"""Arrays with more than 2**31 elements per channel or row (64-bit indexing).

Marked slow: each test needs about 17 GB of memory and is left out of the
default run.  Run with ``pytest -m slow tests/test_big.py``.
"""

import numpy as np
import pytest

import cnorm

N = 2**31 + 16   # elements in one channel / one row


def _pattern():
    # mean 2, biased variance 1, exactly: alternate 1 and 3
    x = np.empty(N, dtype=np.float32)
    x[0::2] = 1.0
    x[1::2] = 3.0
    return x


@pytest.mark.slow
def test_batch_norm_channel_beyond_2_31_elements():
    x = _pattern().reshape(1, 1, N)
    fwd = cnorm.batch_norm_forward(x, eps=0.0)
    assert fwd.mean[0] == 2.0
    assert fwd.invstd[0] == 1.0
    assert fwd.y[0, 0, -1] == 1.0 and fwd.y[0, 0, -2] == -1.0


@pytest.mark.slow
def test_layer_norm_row_beyond_2_31_elements():
    x = _pattern().reshape(1, N)
    fwd = cnorm.layer_norm_forward(x, N, eps=0.0)
    assert fwd.mean[0] == 2.0
    assert fwd.rstd[0] == 1.0
    assert fwd.y[0, -1] == 1.0 and fwd.y[0, 0] == -1.0
