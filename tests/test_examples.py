"""The scripts in examples/ run, in a scratch directory, with and without torch.

"Without torch" is simulated where torch is installed: the script is run
through runpy with ``sys.modules['torch'] = None``, so ``import torch`` fails.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnorm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# the directory cnorm was imported from: the scripts run elsewhere and must find the same build
CNORM_ROOT = str(Path(cnorm.__file__).resolve().parents[1])

_NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_example(name, cwd, *args, torch=True):
    script = str(EXAMPLES / name)
    cmd = [sys.executable, script, *args] if torch else [sys.executable, "-c", _NO_TORCH, script,
                                                         *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CNORM_ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{name} exited with {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


def value(output, label):
    """The number printed after 'label' in output."""
    m = re.search(re.escape(label) + r"\s*([-+0-9.eE]+|nan|inf)", output)
    assert m, f"no {label!r} line in:\n{output}"
    return float(m.group(1))


def test_mlp_without_torch(tmp_path):
    out = run_example("mlp_inference.py", tmp_path, "weights.npz", torch=False)
    assert "torch not installed: wrote seeded random weights to weights.npz" in out
    assert "logits shape (128, 10)" in out
    assert value(out, "max |folded - unfolded| =") < 1e-4
    assert "max |cnorm - torch|" not in out
    assert out.rstrip().endswith("OK")
    with np.load(tmp_path / "weights.npz") as f:
        assert f["0.weight"].shape == (256, 784) and f["1.running_var"].shape == (256,)
    # the second run loads what the first one wrote, and computes the same logits
    again = run_example("mlp_inference.py", tmp_path, "weights.npz", torch=False)
    assert "torch not installed: loaded weights from weights.npz" in again
    assert value(again, "checksum") == value(out, "checksum")
    assert again.rstrip().endswith("OK")


def test_mlp_writes_nothing_in_the_working_directory_by_default(tmp_path):
    out = run_example("mlp_inference.py", tmp_path, torch=False)
    assert re.search(r"wrote seeded random weights to \S+mlp_weights\.npz", out)
    assert out.rstrip().endswith("OK")
    assert list(tmp_path.iterdir()) == []


def test_mlp_with_torch(tmp_path):
    pytest.importorskip("torch")
    default = run_example("mlp_inference.py", tmp_path)
    assert list(tmp_path.iterdir()) == []
    out = run_example("mlp_inference.py", tmp_path, "mlp_weights.npz")
    assert value(out, "checksum") == value(default, "checksum")
    assert "trained 20 steps, wrote the state_dict to mlp_weights.npz" in out
    assert value(out, "max |cnorm - torch| =") < 1e-4
    assert value(out, "max |folded - unfolded| =") < 1e-4
    assert out.rstrip().endswith("OK")
    with np.load(tmp_path / "mlp_weights.npz") as f:
        assert sorted(f.files) == sorted(["0.weight", "0.bias", "1.weight", "1.bias",
                                          "1.running_mean", "1.running_var",
                                          "1.num_batches_tracked", "3.weight", "3.bias"])
        assert int(f["1.num_batches_tracked"]) == 20
    # without torch, the exported weights give the same logits
    numpy_only = run_example("mlp_inference.py", tmp_path, "mlp_weights.npz", torch=False)
    assert "torch not installed: loaded weights from mlp_weights.npz" in numpy_only
    assert value(numpy_only, "checksum") == pytest.approx(value(out, "checksum"), rel=1e-6)


def test_transformer_without_torch(tmp_path):
    out = run_example("transformer_block.py", tmp_path, torch=False)
    assert "output shape (2, 16, 64), dtype float32" in out
    assert np.isfinite(value(out, "checksum"))
    assert "torch not installed: no comparison" in out
    assert out.rstrip().endswith("OK")


def test_transformer_with_torch(tmp_path):
    pytest.importorskip("torch")
    out = run_example("transformer_block.py", tmp_path)
    assert "output shape (2, 16, 64), dtype float32" in out
    assert value(out, "max |numpy+cnorm - torch| =") < 1e-4
    assert out.rstrip().endswith("OK")
    numpy_only = run_example("transformer_block.py", tmp_path, torch=False)
    assert value(numpy_only, "checksum") == value(out, "checksum")


def test_dask_standardize(tmp_path):
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    out = run_example("dask_standardize.py", tmp_path, "--rows", "40000", "--chunk-rows",
                      "3000", "--features", "8")
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+", out)
    assert "data: (40000, 8) float32" in out and "in 14 chunks" in out
    assert "partial_fit over 14 shards" in out
    assert value(out, "samples seen:") == 40000
    assert value(out, "cnorm.dask       max |mean - ref| / std =") < 1e-6
    assert value(out, "max |fit - partial_fit| relative =") < 1e-6
    assert out.rstrip().endswith("OK")
