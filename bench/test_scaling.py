"""bench/scaling.py: its table, from stand-in bench results (no timing here)."""

import importlib.util
import os

import pytest

_spec = importlib.util.spec_from_file_location(
    "scaling", os.path.join(os.path.dirname(__file__), "scaling.py"))
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)


def _fake_run(threads, dtype, ops, mode):
    # cnorm takes 8 ms on one thread and 8/n on n; torch always takes 8 ms
    t = 8e-3 / threads
    return {"meta": {"cnorm": "x", "torch": "y", "cpu": "z"},
            "results": [{"op": "bn_train", "shape": [32, 56, 56, 64], "axis": -1,
                         "dtype": dtype, "cnorm_s": t, "speedup_torch": 8e-3 / t}]}


def test_table_gives_times_and_speedups(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(scaling, "run_bench",
                        lambda *a: calls.append(a) or _fake_run(*a))
    scaling.main(["--threads", "1,4", "--op", "bn_train", "--mode", "quick"])
    assert calls == [(1, "float32", "bn_train", "quick"), (4, "float32", "bn_train", "quick")]
    out = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(out) if line.startswith("bn_train float32 32x56x56x64 axis=-1"))
    assert out[row].split()[-2:] == ["8.000", "2.000"]          # ms on 1 and 4 threads
    assert out[row + 1].split()[-2:] == ["1.00", "4.00"]        # speedup over 1 thread
    assert out[row + 2].split()[-2:] == ["1.00", "4.00"]        # speedup over torch


@pytest.mark.parametrize("bad", ["0,2", "-1", "2,x"])
def test_bad_thread_counts_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        scaling.main(["--threads", bad])
    assert "--threads" in capsys.readouterr().err
