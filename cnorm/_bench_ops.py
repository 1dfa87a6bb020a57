"""The benchmark cases of group, instance and RMS norm, and ONNX Runtime as a peer.

Each case builder returns the callables to time (cnorm, numpy, and torch and
ort where installed and supported) and the bytes the call moves.
"""

import os

import numpy as np

import cnorm
from cnorm import _baselines as nb

GROUPS = 32
GN_CASES = [((8, 256, 28, 28), 1), ((8, 28, 28, 256), -1), ((2, 320, 64, 64), 1),
            ((2, 64, 64, 320), -1)]
GN_SILU_CASES = [((2, 320, 64, 64), 1), ((2, 64, 64, 320), -1)]
IN_CASES = [((8, 64, 56, 56), 1), ((8, 56, 56, 64), -1)]
RMS_CASES = [(4096, 768), (16384, 128), (1, 4096)]
ADD_CASES = [(32, 128, 768), (1, 4096)]
EPS = 1e-5


def tensor(torch, a):
    """torch.from_numpy, for bfloat16 (ml_dtypes') too: the same memory, viewed."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def own(a):
    """A parameter as cnorm's functions take it without a conversion: float32 for
    half-precision data (what its layers keep), else as it is."""
    return a if a.dtype.itemsize >= 4 else a.astype(np.float32)


def ort_module():
    """onnxruntime and onnx, or None when either is missing (or CNORM_BENCH_NO_ORT=1)."""
    if os.environ.get("CNORM_BENCH_NO_ORT") == "1":
        return None
    try:
        import onnx
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime, onnx


def _elem_type(onnx, dtype):
    """ONNX's element type for a NumPy dtype of cnorm's."""
    tp = onnx.TensorProto
    return {"float32": tp.FLOAT, "float64": tp.DOUBLE, "float16": tp.FLOAT16,
            "bfloat16": tp.BFLOAT16}[np.dtype(dtype).name]


def ort_session(ort, op, inputs, attrs, opset, dtype, threads):
    """A one-node InferenceSession on `threads` intra-op threads, spinning off; None when
    ORT has no kernel for it."""
    onnxruntime, onnx = ort
    h = onnx.helper
    et = _elem_type(onnx, dtype)
    node = h.make_node(op, [n for n, _ in inputs], ["y"], **attrs)
    graph = h.make_graph([node], op, [h.make_tensor_value_info(n, et, list(a.shape))
                                      for n, a in inputs], [h.make_tensor_value_info("y", et, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    return _run_session(onnxruntime, model, dict(inputs), threads)


def _run_session(onnxruntime, model, feeds, threads):
    """A callable running model on feeds in an InferenceSession on `threads` intra-op
    threads, spinning off; None when ORT has no kernel for it."""
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        sess = onnxruntime.InferenceSession(model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
    except Exception:            # no kernel for this op or dtype
        return None
    return lambda: sess.run(None, feeds)


def _torch_cl(torch, a, axis):
    """a as a torch tensor in NC... order (a channels-last view when axis is -1)."""
    t = tensor(torch, a)
    if axis % a.ndim != 1:
        t = t.permute(0, a.ndim - 1, *range(1, a.ndim - 1))
    return t


def gn_case(op, shape, axis, dtype, torch, ort, threads, rng):
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    w = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    funcs = {}
    silu = op == "gn_silu"
    if op in ("gn_forward", "gn_silu"):
        act = "silu" if silu else None
        cw, cb = own(w), own(b)
        funcs["cnorm"] = lambda: cnorm.group_norm(x, GROUPS, cw, cb, axis=axis, activation=act)
        funcs["numpy"] = lambda: nb.group_norm(x, GROUPS, w, b, EPS, axis, silu)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        f = cnorm.group_norm_forward(x, GROUPS, w, b, axis=axis)
        cw = own(w)
        funcs["cnorm"] = lambda: cnorm.group_norm_backward(dy, x, f.mean, f.rstd, cw, axis=axis)
        funcs["numpy"] = lambda: nb.group_norm_backward(dy, x, f.mean, f.rstd, w, axis)
        nbytes = 3 * x.nbytes
    if torch is not None:
        F = torch.nn.functional
        tx, tw, tb = _torch_cl(torch, x, axis), tensor(torch, w), tensor(torch, b)
        if op == "gn_forward":
            funcs["torch"] = lambda: F.group_norm(tx, GROUPS, tw, tb, EPS)
        elif silu:
            funcs["torch"] = lambda: F.silu(F.group_norm(tx, GROUPS, tw, tb, EPS))
        else:
            n, hw = shape[0], x.size // (shape[0] * c)
            tdy = _torch_cl(torch, dy, axis)
            _, tm, tr = torch.ops.aten.native_group_norm(tx, tw, tb, n, c, hw, GROUPS, EPS)
            funcs["torch"] = lambda: torch.ops.aten.native_group_norm_backward(
                tdy, tx, tm, tr, tw, n, c, hw, GROUPS, [True, True, True])
    if ort is not None and op == "gn_forward" and axis % x.ndim == 1:
        s = ort_session(ort, "GroupNormalization", [("x", x), ("s", w), ("b", b)],
                        dict(num_groups=GROUPS, epsilon=EPS), 21, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, nbytes


def in_case(op, shape, axis, dtype, torch, ort, threads, rng):
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[axis]
    funcs = {}
    if op == "in_forward":
        funcs["cnorm"] = lambda: cnorm.instance_norm(x, axis=axis)
        funcs["numpy"] = lambda: nb.instance_norm(x, EPS, axis)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        f = cnorm.instance_norm_forward(x, axis=axis)
        ones = np.ones(c, dtype)
        funcs["cnorm"] = lambda: cnorm.instance_norm_backward(dy, x, f.mean, f.rstd, axis=axis)
        funcs["numpy"] = lambda: nb.group_norm_backward(dy, x, f.mean, f.rstd, ones, axis)
        nbytes = 3 * x.nbytes
    if torch is not None:
        F = torch.nn.functional
        tx = _torch_cl(torch, x, axis)
        if op == "in_forward":
            funcs["torch"] = lambda: F.instance_norm(tx, eps=EPS)
        else:
            txg = tx.detach().clone().requires_grad_(True)
            ty = F.instance_norm(txg, eps=EPS)
            tdy = _torch_cl(torch, dy, axis)
            funcs["torch"] = lambda: torch.autograd.grad(ty, txg, tdy, retain_graph=True)
    if ort is not None and op == "in_forward" and axis % x.ndim == 1:
        s = ort_session(ort, "InstanceNormalization", [("x", x), ("s", np.ones(c, dtype)),
                                                       ("b", np.zeros(c, dtype))],
                        dict(epsilon=EPS), 17, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, nbytes


def rms_case(op, shape, dtype, torch, ort, threads, rng):
    x = rng.standard_normal(shape).astype(dtype)
    h = shape[-1]
    w = (1 + 0.1 * rng.standard_normal(h)).astype(dtype)
    funcs = {}
    if op == "rms_forward":
        cw = own(w)
        funcs["cnorm"] = lambda: cnorm.rms_norm(x, h, cw, eps=EPS)
        funcs["numpy"] = lambda: nb.rms_norm(x, w, EPS)
        nbytes = 2 * x.nbytes
    else:
        dy = rng.standard_normal(shape).astype(dtype)
        f = cnorm.rms_norm_forward(x, h, w, eps=EPS)
        cw = own(w)
        funcs["cnorm"] = lambda: cnorm.rms_norm_backward(dy, x, f.rstd, cw)
        funcs["numpy"] = lambda: nb.rms_norm_backward(dy, x, f.rstd, w)
        nbytes = 3 * x.nbytes
    if torch is not None:
        F = torch.nn.functional
        tx, tw = tensor(torch, x), tensor(torch, w)
        if op == "rms_forward":
            funcs["torch"] = lambda: F.rms_norm(tx, (h,), tw, EPS)
        else:
            txg, twg = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)
            ty = F.rms_norm(txg, (h,), twg, EPS)
            tdy = tensor(torch, dy)
            funcs["torch"] = lambda: torch.autograd.grad(ty, (txg, twg), tdy, retain_graph=True)
    if ort is not None and op == "rms_forward":
        s = ort_session(ort, "RMSNormalization", [("x", x), ("s", w)],
                        dict(epsilon=EPS, axis=-1), 23, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, nbytes


def ln_ort(ort, x, w, b, dtype, threads):
    return ort_session(ort, "LayerNormalization", [("x", x), ("s", w), ("b", b)],
                       dict(epsilon=EPS, axis=-1), 17, dtype, threads)


def bn_ort(ort, x, w, b, rm, rv, axis, dtype, threads):
    if axis % x.ndim != 1:
        return None                                    # ONNX's batch norm is channels first
    return ort_session(ort, "BatchNormalization", [("x", x), ("s", w), ("b", b), ("m", rm),
                                                   ("v", rv)], dict(epsilon=EPS), 15, dtype,
                       threads)


def add_case(op, shape, dtype, torch, ort, threads, rng):
    """Fused residual add + layer norm (add_ln) or RMS norm (add_rms): y and h."""
    x = rng.standard_normal(shape).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    h = shape[-1]
    w = (1 + 0.1 * rng.standard_normal(h)).astype(dtype)
    b = (0.1 * rng.standard_normal(h)).astype(dtype)
    cw, cb = own(w), own(b)
    funcs = {}
    if op == "add_ln":
        funcs["cnorm"] = lambda: cnorm.add_layer_norm(x, r, h, cw, cb, eps=EPS)

        def numpy_add_ln():
            s = x + r
            return nb.layer_norm(s, (h,), w, b, EPS), s
        funcs["numpy"] = numpy_add_ln
    else:
        funcs["cnorm"] = lambda: cnorm.add_rms_norm(x, r, h, cw, eps=EPS)

        def numpy_add_rms():
            s = x + r
            return nb.rms_norm(s, w, EPS), s
        funcs["numpy"] = numpy_add_rms
    if torch is not None:
        F = torch.nn.functional
        tx, tr, tw, tb = (tensor(torch, v) for v in (x, r, w, b))
        if op == "add_ln":
            def torch_add_ln():
                s = tx + tr
                return F.layer_norm(s, (h,), tw, tb, EPS), s
            funcs["torch"] = torch_add_ln
        else:
            def torch_add_rms():
                s = tx + tr
                return F.rms_norm(s, (h,), tw, EPS), s
            funcs["torch"] = torch_add_rms
    if ort is not None:
        s = skip_ort(ort, op, x, r, w, b if op == "add_ln" else None, dtype, threads)
        if s is not None:
            funcs["ort"] = s
    return funcs, 4 * x.nbytes


def skip_ort(ort, op, x, r, w, b, dtype, threads):
    """ORT's contrib SkipLayerNormalization / SkipSimplifiedLayerNormalization (outputs y
    and h), on x seen as 3-d; None when ORT lacks it for the dtype."""
    onnxruntime, onnx = ort
    hp = onnx.helper
    et = _elem_type(onnx, dtype)
    x3 = x.reshape((-1,) + x.shape[-2:]) if x.ndim >= 3 else x.reshape(-1, 1, x.shape[-1])
    r3 = r.reshape(x3.shape)
    inputs = [("x", x3), ("r", r3), ("w", w)] + ([("b", b)] if b is not None else [])
    name = "SkipLayerNormalization" if op == "add_ln" else "SkipSimplifiedLayerNormalization"
    node = hp.make_node(name, [n for n, _ in inputs], ["y", "", "", "h"], domain="com.microsoft",
                        epsilon=EPS)
    graph = hp.make_graph([node], name, [hp.make_tensor_value_info(n, et, list(a.shape))
                                         for n, a in inputs],
                          [hp.make_tensor_value_info("y", et, None),
                           hp.make_tensor_value_info("h", et, None)])
    model = hp.make_model(graph, opset_imports=[hp.make_opsetid("", 17),
                                                hp.make_opsetid("com.microsoft", 1)])
    return _run_session(onnxruntime, model, dict(inputs), threads)
