"""The examples in the docstrings run and print what they show."""

import doctest

import pytest

import cnorm.addnorm
import cnorm.batchnorm
import cnorm.layernorm


@pytest.mark.parametrize("module", [cnorm.layernorm, cnorm.batchnorm, cnorm.addnorm],
                         ids=["layernorm", "batchnorm", "addnorm"])
def test_doctests(module):
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.attempted > 0, f"{module.__name__} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
