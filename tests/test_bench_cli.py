"""python -m cnorm.bench: options, output and JSON (on tiny cases, so that it is quick)."""

import json

import pytest

import cnorm
from cnorm import bench


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(bench, "BN_CASES", [((4, 3, 8, 8), 1), ((16, 5), -1)])
    monkeypatch.setattr(bench, "BN_INFER_ONLY", [])
    monkeypatch.setattr(bench, "LN_CASES", [(16, 32)])
    monkeypatch.setattr(bench, "LN_FORWARD_ONLY", [(1, 32)])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda **kw: 1e10)
    monkeypatch.setenv("CNORM_BENCH_NO_TORCH", "1")


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--full", "--threads", "--dtype", "--op", "--json", "--plot"):
        assert opt in out


@pytest.mark.parametrize("argv", [["--op", "bn_nope"], ["--threads", "0"], ["--quick", "--full"]])
def test_bad_options_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_table_and_json(tiny, tmp_path, capsys):
    path = tmp_path / "out.json"
    bench.main(["--quick", "--dtype", "float32", "--threads", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert "numpy" in out and "threads: 1" in out and "copy bandwidth" in out
    data = json.loads(path.read_text())
    ops = {r["op"] for r in data["results"]}
    assert ops == set(bench.OPS)
    for r in data["results"]:
        assert r["cnorm_s"] > 0 and r["numpy_s"] > 0 and r["speedup_numpy"] > 0
        assert r["speedup_torch"] is None and r["dtype"] == "float32"
    assert data["meta"]["threads"] == 1


def test_callable_module(tiny, capsys):
    results = cnorm.bench(ops=("ln_forward",), dtypes=("float64",), mode="quick", progress=None)
    assert [r["shape"] for r in results] == [[16, 32], [1, 32]]


def test_plot_needs_matplotlib_or_writes_png(tiny, tmp_path, capsys):
    path = tmp_path / "speedups.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="matplotlib"):
            bench.main(["--quick", "--op", "ln_forward", "--dtype", "float32", "--plot", str(path)])
    else:
        bench.main(["--quick", "--op", "ln_forward", "--dtype", "float32", "--plot", str(path)])
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
