"""A pre-norm transformer block in NumPy, with cnorm.LayerNorm; inference only.

    python examples/transformer_block.py

    x = x + Attention(LayerNorm(x))      multi-head causal self-attention
    x = x + MLP(LayerNorm(x))            Linear -> GELU (tanh) -> Linear

The first residual add and the second norm are one fused call,
``n, x = ln2(a, residual=x)`` (cnorm.add_layer_norm, which returns the norm
and the sum): x and the attention output a are read once, the new x is
written once, and it is normalised from cache.  The script checks that this
gives the bits of the unfused ``x = x + a; n = ln2(x)``.

The weights are seeded random numbers, in float32.  The script prints the
output's shape and a checksum and, when torch is installed, the largest
difference from the same block written with torch (``F.layer_norm``,
``F.scaled_dot_product_attention``, ``F.gelu``); it exits with status 1 when
that difference exceeds the float32 tolerance.
"""

import sys

import numpy as np

import cnorm

try:
    import torch
except ImportError:
    torch = None

BATCH, SEQ, D_MODEL, N_HEADS, D_FF = 2, 16, 64, 4, 256
TOL = 1e-4          # float32: allowed max |difference|, relative to the scale of the output


def make_weights(seed=0):
    rng = np.random.default_rng(seed)

    def linear(n_out, n_in):
        bound = n_in ** -0.5
        return (rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32),
                rng.uniform(-bound, bound, n_out).astype(np.float32))

    w = {}
    for name in ["q", "k", "v", "o"]:
        w[f"w{name}"], w[f"b{name}"] = linear(D_MODEL, D_MODEL)
    w["w1"], w["b1"] = linear(D_FF, D_MODEL)
    w["w2"], w["b2"] = linear(D_MODEL, D_FF)
    for ln in ["ln1", "ln2"]:
        w[ln] = {"weight": rng.uniform(0.8, 1.2, D_MODEL).astype(np.float32),
                 "bias": rng.uniform(-0.1, 0.1, D_MODEL).astype(np.float32)}
    return w


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + 0.044715 * x ** 3)))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Block:
    """The block in NumPy; LayerNorm is cnorm's."""

    def __init__(self, w):
        self.w = w
        self.ln1 = cnorm.LayerNorm(D_MODEL).eval()
        self.ln1.load_state_dict(w["ln1"])
        self.ln2 = cnorm.LayerNorm(D_MODEL).eval()
        self.ln2.load_state_dict(w["ln2"])

    def attention(self, h):
        w = self.w
        b, t, d = h.shape
        dh = d // N_HEADS

        def heads(name):   # (B, T, D) -> (B, H, T, Dh)
            p = h @ w[f"w{name}"].T + w[f"b{name}"]
            return p.reshape(b, t, N_HEADS, dh).transpose(0, 2, 1, 3)

        q, k, v = heads("q"), heads("k"), heads("v")
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dh))
        causal = np.triu(np.ones((t, t), dtype=bool), k=1)
        scores = np.where(causal, np.float32(-np.inf), scores)
        o = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
        return o @ w["wo"].T + w["bo"]

    def mlp(self, h):
        w = self.w
        return gelu_tanh(h @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"]

    def __call__(self, x):
        a = self.attention(self.ln1(x))
        n, x = self.ln2(a, residual=x)        # (y, h): x = x + a and n = LayerNorm(x), fused
        return x + self.mlp(n)

    def unfused(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def torch_block(w, x):
    """The same block in torch."""
    F = torch.nn.functional
    T = torch.from_numpy
    x = T(x)
    b, t, d = x.shape
    dh = d // N_HEADS

    def heads(h, name):
        p = F.linear(h, T(w[f"w{name}"]), T(w[f"b{name}"]))
        return p.reshape(b, t, N_HEADS, dh).transpose(1, 2)

    with torch.no_grad():
        h = F.layer_norm(x, (d,), T(w["ln1"]["weight"]), T(w["ln1"]["bias"]), 1e-5)
        o = F.scaled_dot_product_attention(heads(h, "q"), heads(h, "k"), heads(h, "v"),
                                           is_causal=True)
        x = x + F.linear(o.transpose(1, 2).reshape(b, t, d), T(w["wo"]), T(w["bo"]))
        h = F.layer_norm(x, (d,), T(w["ln2"]["weight"]), T(w["ln2"]["bias"]), 1e-5)
        h = F.gelu(F.linear(h, T(w["w1"]), T(w["b1"])), approximate="tanh")
        return (x + F.linear(h, T(w["w2"]), T(w["b2"]))).numpy()


def main():
    w = make_weights()
    x = np.random.default_rng(1).standard_normal((BATCH, SEQ, D_MODEL)).astype(np.float32)
    block = Block(w)
    y = block(x)
    print(f"output shape {y.shape}, dtype {y.dtype}, "
          f"checksum {float(y.astype(np.float64).sum()):.6f}")
    if y.tobytes() != block.unfused(x).tobytes():
        print("FAIL: the fused residual add and norm differ from the unfused ones")
        return 1
    print("fused add + LayerNorm: the same bits as the unfused block")
    if torch is None:
        print("torch not installed: no comparison")
        print("OK")
        return 0
    expected = torch_block(w, x)
    d = float(np.abs(y - expected).max())
    print(f"max |numpy+cnorm - torch| = {d:.3g}")
    if not d <= TOL * max(1.0, float(np.abs(expected).max())):
        print(f"FAIL: the NumPy block differs from torch by {d:.3g}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
