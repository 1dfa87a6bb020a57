"""Inference of a 784-256-BatchNorm-ReLU-10 MLP with NumPy and cnorm, from torch weights.

    python examples/mlp_inference.py [WEIGHTS.npz]

With torch installed, the network is built as ``torch.nn.Sequential``,
trained for a few steps on random (seeded) data, switched to eval mode, and
its ``state_dict()`` is written to WEIGHTS.npz.  Without torch, WEIGHTS.npz
is loaded when it exists; otherwise seeded random parameters are created and
written there.  Without a WEIGHTS.npz argument the file goes to a temporary
directory that is removed at exit: nothing is left in the working directory.

Inference then runs on NumPy and cnorm alone: Linear as ``x @ W.T + b``,
`cnorm.BatchNorm` in eval mode loaded with ``load_state_dict``, ReLU; then
again with the batch norm folded into the first Linear by
`cnorm.fold_batch_norm`.  The script prints the largest differences (from
torch's output when torch is there, and folded against unfolded) and exits
with status 1 when one exceeds the float32 tolerance.
"""

import os
import sys
import tempfile

import numpy as np

import cnorm

try:
    import torch
except ImportError:
    torch = None

N_IN, N_HIDDEN, N_OUT = 784, 256, 10
TRAIN_STEPS, TRAIN_BATCH = 20, 64
TOL = 1e-4          # float32: allowed max |difference|, relative to the scale of the logits


def train_torch():
    """Build and briefly train the network in torch; returns it in eval mode."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(N_IN, N_HIDDEN), nn.BatchNorm1d(N_HIDDEN), nn.ReLU(),
                          nn.Linear(N_HIDDEN, N_OUT))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(TRAIN_STEPS):
        x = torch.randn(TRAIN_BATCH, N_IN, generator=gen) + 0.5
        target = torch.randint(0, N_OUT, (TRAIN_BATCH,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def random_parameters():
    """Seeded random parameters under torch's state_dict keys (used without torch)."""
    rng = np.random.default_rng(0)

    def uniform(bound, *shape):
        return rng.uniform(-bound, bound, shape).astype(np.float32)

    return {
        "0.weight": uniform(N_IN ** -0.5, N_HIDDEN, N_IN),
        "0.bias": uniform(N_IN ** -0.5, N_HIDDEN),
        "1.weight": rng.uniform(0.8, 1.2, N_HIDDEN).astype(np.float32),
        "1.bias": uniform(0.1, N_HIDDEN),
        "1.running_mean": uniform(0.3, N_HIDDEN),
        "1.running_var": rng.uniform(0.2, 0.5, N_HIDDEN).astype(np.float32),
        "1.num_batches_tracked": np.array(0, dtype=np.int64),
        "3.weight": uniform(N_HIDDEN ** -0.5, N_OUT, N_HIDDEN),
        "3.bias": uniform(N_HIDDEN ** -0.5, N_OUT),
    }


def sub_state(params, prefix):
    """The entries of one layer, with the 'index.' prefix of nn.Sequential removed."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def main(argv):
    if len(argv) > 1:
        return run(argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        return run(os.path.join(tmp, "mlp_weights.npz"))


def run(path):
    model = None
    if torch is not None:
        model = train_torch()
        params = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        np.savez(path, **params)
        print(f"torch {torch.__version__}: trained {TRAIN_STEPS} steps, wrote the state_dict "
              f"to {path}")
    else:
        try:
            with np.load(path) as f:
                params = {k: f[k] for k in f.files}
            print(f"torch not installed: loaded weights from {path}")
        except FileNotFoundError:
            params = random_parameters()
            np.savez(path, **params)
            print(f"torch not installed: wrote seeded random weights to {path}")

    w1, b1 = params["0.weight"], params["0.bias"]
    w2, b2 = params["3.weight"], params["3.bias"]
    bn = cnorm.BatchNorm(N_HIDDEN, dtype=np.float32).eval()
    bn.load_state_dict(sub_state(params, "1."))

    x = np.random.default_rng(2).standard_normal((128, N_IN)).astype(np.float32) + 0.5

    # unfolded: Linear -> BatchNorm (running statistics) -> ReLU -> Linear
    h = np.maximum(bn(x @ w1.T + b1), 0)
    logits = h @ w2.T + b2
    scale = max(1.0, float(np.abs(logits).max()))
    print(f"logits shape {logits.shape}, checksum {float(logits.astype(np.float64).sum()):.6f}")

    failures = []
    if model is not None:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        d = float(np.abs(logits - expected).max())
        print(f"max |cnorm - torch| = {d:.3g}")
        if d > TOL * scale:
            failures.append(f"cnorm differs from torch by {d:.3g}")

    # folded: the batch norm merged into the first Linear
    fw1, fb1 = cnorm.fold_batch_norm(w1, b1, bn.weight, bn.bias, bn.running_mean,
                                     bn.running_var, eps=bn.eps)
    folded = np.maximum(x @ fw1.T + fb1, 0) @ w2.T + b2
    d = float(np.abs(folded - logits).max())
    print(f"max |folded - unfolded| = {d:.3g}")
    if d > TOL * scale:
        failures.append(f"folded differs from unfolded by {d:.3g}")

    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
