"""ONNX's own backend node tests, run on cnorm: an external check of the ops' semantics.

The onnx package ships, for each operator, small models with inputs and expected
outputs (onnx/backend/test/data/node).  Each normalization test there is mapped
onto the cnorm call with the same meaning and compared with ONNX's outputs.
"""

import os
from pathlib import Path

import numpy as np
import pytest

import cnorm

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402

NODE_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "node"
PREFIXES = ("test_batchnorm_", "test_layer_normalization_", "test_group_normalization_",
            "test_instancenorm_", "test_rms_normalization_")
TESTS = sorted(p.name for p in NODE_DIR.iterdir() if p.name.startswith(PREFIXES)
               and "_expanded" not in p.name) if NODE_DIR.is_dir() else []


def _load(name):
    d = NODE_DIR / name
    model = onnx.load(str(d / "model.onnx"))
    node = model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    data = d / "test_data_set_0"

    def tensors(prefix):
        files = sorted(data.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        out = []
        for f in files:
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            out.append(numpy_helper.to_array(t))
        return out

    return node, attrs, tensors("input"), tensors("output")


def _run(node, attrs, inputs):
    """cnorm's outputs for an ONNX node, or None for a variant cnorm does not express."""
    op = node.op_type
    eps = attrs.get("epsilon", 1e-5)
    x = inputs[0]
    if op == "BatchNormalization":
        scale, b, mean, var = inputs[1:5]
        if attrs.get("training_mode", 0):
            # ONNX's running variance is the biased one and its momentum the old value's
            # weight: only Y compares
            return [cnorm.batch_norm(x, scale, b, mean.copy(), var.copy(), training=True,
                                     momentum=1 - attrs.get("momentum", 0.9), eps=eps)]
        return [cnorm.batch_norm(x, scale, b, mean, var, eps=eps)]
    if op == "LayerNormalization":
        axis = attrs.get("axis", -1) % x.ndim
        shape = x.shape[axis:]
        w = np.broadcast_to(inputs[1], shape)
        b = np.broadcast_to(inputs[2], shape) if len(inputs) > 2 else None
        y, mean, rstd = cnorm.layer_norm_forward(x, shape, w, b, eps=eps)
        keep = x.shape[:axis] + (1,) * (x.ndim - axis)
        return [y, mean.reshape(keep), rstd.reshape(keep)]
    if op == "GroupNormalization":
        return [cnorm.group_norm(x, attrs["num_groups"], inputs[1], inputs[2], eps=eps)]
    if op == "InstanceNormalization":
        return [cnorm.instance_norm(x, inputs[1], inputs[2], eps=eps)]
    if op == "RMSNormalization":
        axis = attrs.get("axis", -1) % x.ndim
        shape = x.shape[axis:]
        return [cnorm.rms_norm(x, shape, np.broadcast_to(inputs[1], shape), eps=eps)]
    return None


@pytest.mark.skipif(not TESTS, reason="this onnx package ships no backend node test data")
@pytest.mark.parametrize("name", TESTS)
def test_onnx_node(name):
    node, attrs, inputs, expected = _load(name)
    got = _run(node, attrs, inputs)
    assert got is not None, f"{node.op_type} is not mapped"
    for g, e in zip(got, expected):
        tol = 1e-5 if e.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=name)


def test_every_normalization_op_has_node_tests():
    if not TESTS:
        pytest.skip("this onnx package ships no backend node test data")
    ops = {_load(n)[0].op_type for n in TESTS}
    assert ops >= {"BatchNormalization", "LayerNormalization", "GroupNormalization",
                   "InstanceNormalization", "RMSNormalization"}
