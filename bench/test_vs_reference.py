"""bench/vs_reference.py: its ratios, marks and JSON, on tiny shapes (no timing asserted)."""

import importlib.util
import json
import os

import cnorm

_spec = importlib.util.spec_from_file_location(
    "vs_reference", os.path.join(os.path.dirname(__file__), "vs_reference.py"))
vs_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vs_reference)


def test_speedup_and_ceiling_use_the_fastest_single_pass(monkeypatch):
    times = {"slow": 2.0, "cnorm": 0.25, "copy": 0.5, "inference": 0.08}
    monkeypatch.setattr(vs_reference, "interleaved", lambda slow, fast, budget: times)
    r = vs_reference.compare("train", None, None, {"copy": None, "inference": None}, 0.1)
    assert r == {"pass": "train", "speedup": 8.0, "ceiling": 25.0}


def test_cells_mark_shortfalls_by_whether_the_ceiling_allows_the_bar():
    cell = vs_reference.cell
    assert cell({"pass": "train", "speedup": 21.0, "ceiling": 30.0}).rstrip().endswith(")")
    assert cell({"pass": "train", "speedup": 12.0, "ceiling": 30.0}).rstrip().endswith("<")
    assert cell({"pass": "train", "speedup": 12.0, "ceiling": 15.0}).rstrip().endswith("!")


def test_interleaved_times_every_function(monkeypatch):
    calls = {"slow": 0, "a": 0, "b": 0}

    def counter(name):
        def f():
            calls[name] += 1
        return f

    t = vs_reference.interleaved(counter("slow"), {"a": counter("a"), "b": counter("b")}, 0.0)
    assert set(t) == {"slow", "a", "b"} and all(v >= 0.0 for v in t.values())
    # five rounds at least, each with one slow call and at least one of the others
    assert calls["slow"] >= 5 + 2 and calls["a"] >= 5 + 2 and calls["b"] >= 5 + 2


def test_main_runs_every_case_and_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(vs_reference, "BN_CASES", [((4, 3, 5), 1), ((6, 3), -1)])
    monkeypatch.setattr(vs_reference, "LN_CASES", [(5, 8)])
    path = tmp_path / "r.json"
    threads = cnorm.get_num_threads()
    try:
        vs_reference.main(["--dtype", "float32", "--budget", "0", "--threads", "1",
                           "--json", str(path)])
    finally:
        cnorm.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "BN float32  4x3x5 " in out and "BN float32  6x3 axis=-1" in out
    assert "LN float32  5x8 " in out
    data = json.loads(path.read_text())
    assert data["bar"] == 20.0 and data["threads"] == 1
    passes = [(r["op"], r["pass"]) for r in data["results"]]
    assert passes == [("BN", "train"), ("BN", "infer"), ("BN", "backward")] * 2 + \
        [("LN", "forward"), ("LN", "backward")]
    assert all(r["speedup"] > 0 and r["ceiling"] > 0 for r in data["results"])
