"""python -m cnorm.bench: options, output and JSON (on tiny cases, so that it is quick)."""

import json

import numpy as np
import pytest

import cnorm
from cnorm import bench


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(bench, "BN_CASES", [((4, 3, 8, 8), 1), ((16, 5), -1)])
    monkeypatch.setattr(bench, "BN_INFER_ONLY", [])
    monkeypatch.setattr(bench, "BN_TRAIN_ONLY", [])
    monkeypatch.setattr(bench, "LN_CASES", [(16, 32)])
    monkeypatch.setattr(bench, "LN_FORWARD_ONLY", [(1, 32)])
    monkeypatch.setattr(bench.ops_new, "GN_CASES", [((2, 32, 3, 3), 1), ((2, 3, 3, 32), -1)])
    monkeypatch.setattr(bench.ops_new, "GN_SILU_CASES", [((2, 32, 3, 3), 1)])
    monkeypatch.setattr(bench.ops_new, "IN_CASES", [((2, 4, 3, 3), 1), ((2, 3, 3, 4), -1)])
    monkeypatch.setattr(bench.ops_new, "RMS_CASES", [(16, 32), (1, 32)])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda **kw: 1e10)
    monkeypatch.setenv("CNORM_BENCH_NO_TORCH", "1")
    monkeypatch.setenv("CNORM_BENCH_NO_ORT", "1")


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--quick", "--full", "--threads", "--dtype", "--op", "--json", "--plot"):
        assert opt in out


@pytest.mark.parametrize("argv", [["--op", "bn_nope"], ["--threads", "0"], ["--quick", "--full"],
                                  ["--dtype", "int8"], ["--dtype", "float32,float8"]])
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
        assert r["speedup_torch"] is None and r["speedup_ort"] is None
        assert r["dtype"] == "float32"
    assert data["meta"]["threads"] == 1


def test_half_precision_cases(tiny, tmp_path, capsys):
    """--dtype float16,bfloat16: every op in both half types, x (and y) of that dtype."""
    pytest.importorskip("ml_dtypes")
    path = tmp_path / "out.json"
    bench.main(["--quick", "--dtype", "float16,bfloat16", "--threads", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    got = {(r["op"], r["dtype"]) for r in data["results"]}
    assert got == {(op, dt) for op in bench.OPS for dt in ("float16", "bfloat16")}
    assert all(r["cnorm_s"] > 0 and r["nbytes"] > 0 for r in data["results"])
    assert "float16" in capsys.readouterr().out


def test_ort_column_for_the_forward_ops_it_has(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.delenv("CNORM_BENCH_NO_ORT")
    path = tmp_path / "out.json"
    bench.main(["--quick", "--dtype", "float32", "--threads", "1", "--json", str(path), "--op",
                "ln_forward,rms_forward,gn_forward,in_forward,bn_infer,bn_train"])
    data = json.loads(path.read_text())
    has = {(r["op"], r["axis"]) for r in data["results"] if r["speedup_ort"]}
    assert {("ln_forward", -1), ("rms_forward", -1), ("gn_forward", 1), ("in_forward", 1),
            ("bn_infer", 1)} <= has
    assert not any(op == "bn_train" or op in ("gn_forward", "in_forward") and axis == -1
                   for op, axis in has)       # no training mode, no channels-last kernels
    assert data["meta"]["onnxruntime"]


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


# Noise: spread, unstable and busy flags, the load and copy-bandwidth warnings, %copy's (cache).

def _clock(other):
    """A stand-in for bench._cpu_snapshot: other processes keep `other` CPUs busy."""
    wall = [0.0]

    def snapshot():
        wall[0] += 1.0
        return wall[0], wall[0] * (1 + other), wall[0]
    return snapshot


@pytest.fixture
def quiet(tiny, monkeypatch):
    """tiny, on a machine that reads as idle whatever the real one is doing."""
    monkeypatch.setattr(bench, "_cpus_available", lambda: 1)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(bench, "_cpu_snapshot", _clock(0.0))


def _fake_samples(monkeypatch, by_case):
    """Replace the timing: case i's samples are by_case[i] (impl -> seconds), else steady."""
    steady = [2.00e-4, 2.02e-4, 2.01e-4]
    calls = []

    def measure_samples(funcs, min_time, rounds):
        given = by_case.get(len(calls), {})
        calls.append(list(funcs))
        return {k: list(given.get(k, steady)) for k in funcs}
    monkeypatch.setattr(bench, "measure_samples", measure_samples)


def _rows(out):
    return [line for line in out.splitlines() if line.split(" ", 1)[0] in bench.OPS]


def _run(tmp_path, *extra):
    path = tmp_path / "out.json"
    bench.main(["--quick", "--op", "bn_train", "--dtype", "float32", "--threads", "1",
                "--json", str(path), *extra])
    return json.loads(path.read_text())


def test_spread():
    assert bench.spread([1.0, 1.0, 2.0]) == pytest.approx(1.0)
    assert bench.spread([3.0, 3.0, 3.0]) == 0.0


def test_measure_samples_keeps_every_sample():
    samples = bench.measure_samples({"a": lambda: None, "b": lambda: None}, 1e-4, 4)
    assert set(samples) == {"a", "b"}
    assert all(len(v) == 4 and min(v) > 0 for v in samples.values())
    assert set(bench.measure({"a": lambda: None}, 1e-4, 3)) == {"a"}


def test_tick_outliers_mark_the_row_unstable(quiet, monkeypatch, tmp_path, capsys):
    # case 0: cnorm at 0.2 ms but two of three samples lost 8 ms to scheduler ticks;
    # case 1: cnorm steady, numpy's samples spread, so the ratio is unreliable too.
    _fake_samples(monkeypatch, {0: {"cnorm": [2e-4, 8.2e-3, 8.3e-3]},
                                1: {"numpy": [2e-4, 2e-4, 4e-4]}})
    data = _run(tmp_path)
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 2
    assert "unstable (cnorm)" in rows[0] and "numpy" not in rows[0].split("unstable")[1]
    assert "unstable (numpy)" in rows[1] and "cnorm" not in rows[1].split("unstable")[1]
    r0, r1 = data["results"]
    assert r0["unstable"] and r0["unstable_impls"] == ["cnorm"]
    assert r0["cnorm_s"] == pytest.approx(8.2e-3) and r0["cnorm_min_s"] == pytest.approx(2e-4)
    assert r0["cnorm_max_s"] == pytest.approx(8.3e-3)
    assert r0["cnorm_spread"] > 0.9 and r0["cnorm_samples_s"] == [2e-4, 8.2e-3, 8.3e-3]
    assert r1["unstable"] and r1["unstable_impls"] == ["numpy"] and r1["cnorm_spread"] < 0.05
    assert "2 of 2 cases unstable" in out
    assert any(line.startswith("spread ") for line in out.splitlines())   # the legend


def test_steady_case_is_not_marked(quiet, monkeypatch, tmp_path, capsys):
    _fake_samples(monkeypatch, {})
    data = _run(tmp_path)
    out = capsys.readouterr().out
    assert "unstable (" not in out and "busy (" not in out and "WARNING" not in out
    for r in data["results"]:
        assert not r["unstable"] and not r["busy"] and r["cnorm_spread"] < 0.05
        assert r["other_cpus"] == pytest.approx(0.0)
    assert data["meta"]["busy"] is False and data["meta"]["load_average"] == 0.0
    assert data["meta"]["copy_bandwidth_end"] == 1e10


def test_other_processes_mark_rows_busy(quiet, monkeypatch, tmp_path, capsys):
    # Every sample slowed alike: no spread, but /proc/stat shows another process.
    _fake_samples(monkeypatch, {})
    monkeypatch.setattr(bench, "_cpu_snapshot", _clock(1.0))
    data = _run(tmp_path)
    out = capsys.readouterr().out
    assert all("busy (1.0 CPU elsewhere)" in row for row in _rows(out))
    assert "WARNING: machine busy: other processes" in out
    assert all(r["busy"] and r["other_cpus"] == pytest.approx(1.0) for r in data["results"])
    assert data["meta"]["busy"] is True and data["meta"]["other_cpus"] == pytest.approx(1.0)


def test_high_load_average_warns_in_the_header(quiet, monkeypatch, tmp_path, capsys):
    _fake_samples(monkeypatch, {})
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (2.5, 1.0, 0.5))
    data = _run(tmp_path)
    out = capsys.readouterr().out
    header = out.split("\n\n", 1)[0]
    assert "load average 2.50" in header and "WARNING: machine busy: load average" in header
    assert data["meta"]["busy"] is True and data["meta"]["load_average"] == 2.5


@pytest.mark.parametrize("on", [True, False])
def test_header_and_json_name_the_prefetch_burst_setting(quiet, monkeypatch, tmp_path, capsys,
                                                          on):
    _fake_samples(monkeypatch, {})
    monkeypatch.setattr(bench._dispatch, "PREFETCH_BURSTS", on)
    data = _run(tmp_path)
    header = capsys.readouterr().out.split("\n\n", 1)[0]
    assert f"prefetch bursts {'on' if on else 'off'})" in header
    assert data["meta"]["prefetch_bursts"] is on


def test_copy_bandwidths_that_disagree_warn(quiet, monkeypatch, tmp_path, capsys):
    _fake_samples(monkeypatch, {})
    figures = iter([2e10, 1e10])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda **kw: next(figures))
    data = _run(tmp_path)
    out = capsys.readouterr().out
    assert "copy bandwidth at the end: 10.0 GB/s (start: 20.0 GB/s)" in out
    assert "WARNING: machine busy: the copy bandwidth changed" in out
    assert data["meta"]["copy_bandwidth"] == 2e10 and data["meta"]["copy_bandwidth_end"] == 1e10
    assert data["meta"]["busy"] is True


def test_copy_bandwidths_that_agree_do_not_warn(quiet, monkeypatch, tmp_path, capsys):
    _fake_samples(monkeypatch, {})
    figures = iter([1e10, 1.1e10])
    monkeypatch.setattr(bench, "copy_bandwidth", lambda **kw: next(figures))
    data = _run(tmp_path)
    assert "WARNING" not in capsys.readouterr().out
    assert data["meta"]["busy"] is False


@pytest.mark.parametrize("llc", [0, 8 << 20])  # 0: unknown, taken as 32 MiB
def test_cache_resident_case_prints_cache_not_a_percentage(quiet, monkeypatch, tmp_path, capsys,
                                                            llc):
    _fake_samples(monkeypatch, {})   # 0.2 ms for a few KiB: far above the copy bandwidth
    monkeypatch.setattr(bench, "_cache_bytes", lambda: llc)
    data = _run(tmp_path)
    out = capsys.readouterr().out
    for row in _rows(out):
        assert row.endswith("(cache)") and not row.endswith("%")
    assert "%copy" in out and "last-level cache" in out
    for r in data["results"]:
        assert r["cache_resident"] is True and r["pct_copy"] > 0
    assert data["meta"]["llc_bytes"] == (llc or 32 << 20)


def test_case_larger_than_the_cache_prints_a_percentage(quiet, monkeypatch, tmp_path, capsys):
    _fake_samples(monkeypatch, {})
    monkeypatch.setattr(bench, "_cache_bytes", lambda: 64)   # smaller than any case
    data = _run(tmp_path)
    rows = _rows(capsys.readouterr().out)
    for row, r in zip(rows, data["results"]):
        assert "(cache)" not in row and row.endswith(f"{r['pct_copy']:6.0f}%")
        assert r["cache_resident"] is False


def test_out_mode_labels_and_json(tiny, tmp_path, capsys):
    """--out: the OUT_OPS cases give their outputs (labelled out=, given_out in the JSON);
    the other ops still allocate."""
    path = tmp_path / "out.json"
    bench.main(["--quick", "--out", "--dtype", "float32", "--threads", "1", "--json", str(path),
                "--op", ",".join(bench.OUT_OPS) + ",rms_forward"])
    out = capsys.readouterr().out
    assert "outputs: given (out=)" in out
    data = json.loads(path.read_text())
    assert data["meta"]["given_out"] is True
    for r in data["results"]:
        assert r["given_out"] == (r["op"] in bench.OUT_OPS), r["op"]
    rows = [line for line in out.splitlines() if line.startswith(("bn_", "ln_", "rms_"))]
    assert rows and all(("out=" in line) == (not line.startswith("rms_")) for line in rows)
    bench.main(["--quick", "--dtype", "float32", "--threads", "1", "--op", "ln_forward"])
    assert "out=" not in capsys.readouterr().out.split("outputs:")[1].split("\n", 1)[1]


@pytest.mark.parametrize("op,shape,axis", [
    (op, shape, axis) for op in bench.OUT_OPS
    for shape, axis in ([((4, 3, 8, 8), 1), ((4, 8, 8, 3), -1), ((16, 32), -1)]
                        if op.startswith("bn_") else [((16, 32), -1)])])
def test_out_mode_callables_write_one_buffer(op, shape, axis):
    """In out mode cnorm's call returns the same array each time, and torch's .out call
    (when torch is installed) writes the same result into its given tensor."""
    rng = np.random.default_rng(0)
    mk = bench._bn_case if op.startswith("bn_") else bench._ln_case
    args = (op, shape, axis, np.dtype(np.float32)) if op.startswith("bn_") else (op, shape,
                                                                                  np.dtype(np.float32))
    try:
        import torch
    except ImportError:
        torch = None
    funcs, _ = mk(*args, torch, rng, given_out=True)
    a, b = funcs["cnorm"](), funcs["cnorm"]()
    first = (lambda r: r[0] if isinstance(r, tuple) else r)
    assert first(a) is first(b)
    alloc, _ = mk(*args, None, np.random.default_rng(0))
    np.testing.assert_array_equal(first(alloc["cnorm"]()), first(a))
    if torch is not None:       # cnorm and torch share the output buffer: keep cnorm's
        want = first(a).copy()
        first(a)[...] = np.nan
        torch.set_num_threads(1)
        got = funcs["torch"]()[0]
        if axis != 1 and len(shape) == 4:       # torch's NCHW view of the channels-last y
            got = got.permute(0, 2, 3, 1)
        assert got.data_ptr() == first(a).ctypes.data   # written into the given buffer
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_per_call_script_times_every_op_and_layer(capsys):
    """bench/per_call.py (the batch-1 cost of each op and layer), on a few calls."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "per_call.py"
    spec = importlib.util.spec_from_file_location("per_call", path)
    per_call = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(per_call)
    dtypes = "float32,float16" + (",bfloat16" if cnorm._checks.bfloat16() is not None else "")
    per_call.main(["--number", "3", "--repeat", "1", "--no-torch", "--dtype", dtypes])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    names = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "batch_norm",
             "group_norm", "instance_norm", "LayerNorm(768)", "BatchNorm(64)")
    for dt in dtypes.split(","):
        got = [r for r in rows if dt in r]
        assert len(got) == 15, dt
        for name in names:
            assert any(r[0] == name for r in got), (dt, name)
        for r in got:     # cnorm's time, and "-" for torch (not run)
            assert float(r[-3]) > 0 and r[-2] == "-", r


def test_bn_backward_bound_script_runs(capsys):
    """bench/bn_backward_bound.py, on a small shape."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bn_backward_bound.py"
    spec = importlib.util.spec_from_file_location("bn_backward_bound", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--shape", "2,4,8,8", "--calls", "2", "--no-torch"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shape (2, 4, 8, 8)")
    assert [ln.split("(")[0].strip() for ln in lines[1:]] == ["backward", "inference", "moments"]
    from cnorm import _openmp
    assert _openmp.explicit_threads() is None     # the script gave the thread setting back
