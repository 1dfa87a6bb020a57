"""The cost of one small call: every op and layer on a batch-1 input, against torch.

    python bench/per_call.py [--dtype float32,float16,bfloat16] [--number 2000]
                             [--repeat 7] [--no-torch]

Each call is timed as a user writes it (outputs allocated by the call), with
`timeit`: the best of `repeat` repeats of `number` calls, in microseconds.  Float16
and bfloat16 rows give the weights in x's own dtype, as a model shipped in half
precision has them (cnorm widens them exactly; torch takes them as they are).  torch,
when installed, runs the same call on its default thread count, through
torch.nn.functional and its modules (torch.inference_mode for the forward calls).
Rows torch has no counterpart for print "-".
"""

import argparse
import timeit

import numpy as np

import cnorm
from cnorm.bench import _torch as optional_torch
from cnorm._checks import dtype_value


def cases(dt, rng):
    """[(name, cnorm call, torch call maker or None)]: the maker takes the torch module
    and returns the call."""
    pdt = np.float32 if dt.itemsize == 2 else dt
    wdt = dt if dt.itemsize == 2 else pdt       # half precision: weights in x's dtype
    x = rng.standard_normal((1, 768)).astype(dt)
    r = rng.standard_normal((1, 768)).astype(dt)
    w = rng.uniform(0.5, 1.5, 768).astype(wdt)
    b = rng.uniform(-1, 1, 768).astype(wdt)
    xc = rng.standard_normal((1, 64, 8, 8)).astype(dt)
    dyc = rng.standard_normal(xc.shape).astype(dt)
    wc = rng.uniform(0.5, 1.5, 64).astype(wdt)
    bc = rng.uniform(-1, 1, 64).astype(wdt)
    rm = np.zeros(64, pdt)
    rv = np.ones(64, pdt)
    lf = cnorm.layer_norm_forward(x, 768, w, b)
    bf = cnorm.batch_norm_forward(xc, wc, bc)
    ln, rms = cnorm.LayerNorm(768, dtype=dt), cnorm.RMSNorm(768, dtype=dt)
    gn, bn = cnorm.GroupNorm(8, 64, dtype=dt), cnorm.BatchNorm(64, dtype=dt).eval()

    def tensor(torch, a):
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(a)

    def forward(make):
        """A torch maker from make(torch, F, arrays as tensors): run under inference_mode."""
        def maker(torch):
            f = make(torch, torch.nn.functional,
                     *[tensor(torch, a) for a in (x, r, w, b, xc, wc, bc, rm, rv)])

            def run():
                with torch.inference_mode():
                    return f()
            return run
        return maker

    def module(build, inp):
        return forward(lambda torch, F, *t: (lambda m=build(torch.nn).to(tensor(torch, inp).dtype),
                                             v=tensor(torch, inp): m(v)))

    bn_eval = cnorm.batch_norm
    return [
        ("layer_norm (1, 768)", lambda: cnorm.layer_norm(x, 768, w, b),
         forward(lambda torch, F, tx, tr, tw, tb, *_: lambda: F.layer_norm(tx, (768,), tw, tb))),
        ("layer_norm_forward", lambda: cnorm.layer_norm_forward(x, 768, w, b), None),
        ("layer_norm_backward", lambda: cnorm.layer_norm_backward(r, x, lf.mean, lf.rstd, w),
         None),
        ("rms_norm (1, 768)", lambda: cnorm.rms_norm(x, 768, w),
         forward(lambda torch, F, tx, tr, tw, *_: lambda: F.rms_norm(tx, (768,), tw))),
        ("add_layer_norm (1, 768)", lambda: cnorm.add_layer_norm(x, r, 768, w, b),
         forward(lambda torch, F, tx, tr, tw, tb, *_: lambda: F.layer_norm(tx + tr, (768,), tw,
                                                                            tb))),
        ("add_rms_norm (1, 768)", lambda: cnorm.add_rms_norm(x, r, 768, w),
         forward(lambda torch, F, tx, tr, tw, *_: lambda: F.rms_norm(tx + tr, (768,), tw))),
        ("batch_norm training (1, 64, 8, 8)",
         lambda: cnorm.batch_norm(xc, wc, bc, rm, rv, training=True), None),
        ("batch_norm inference", lambda: bn_eval(xc, wc, bc, rm, rv),
         forward(lambda torch, F, tx, tr, tw, tb, txc, twc, tbc, trm, trv:
                 lambda: F.batch_norm(txc, trm, trv, twc, tbc, False))),
        ("batch_norm_backward",
         lambda: cnorm.batch_norm_backward(dyc, xc, bf.mean, bf.invstd, wc), None),
        ("group_norm (1, 64, 8, 8), 8 groups", lambda: cnorm.group_norm(xc, 8, wc, bc),
         forward(lambda torch, F, tx, tr, tw, tb, txc, twc, tbc, *_:
                 lambda: F.group_norm(txc, 8, twc, tbc))),
        ("instance_norm (1, 64, 8, 8)", lambda: cnorm.instance_norm(xc, wc, bc),
         forward(lambda torch, F, tx, tr, tw, tb, txc, twc, tbc, *_:
                 lambda: F.instance_norm(txc, weight=twc, bias=tbc))),
        ("LayerNorm(768) layer", lambda: ln(x), module(lambda nn: nn.LayerNorm(768), x)),
        ("RMSNorm(768) layer", lambda: rms(x), module(lambda nn: nn.RMSNorm(768), x)),
        ("GroupNorm(8, 64) layer", lambda: gn(xc), module(lambda nn: nn.GroupNorm(8, 64), xc)),
        ("BatchNorm(64) layer, eval", lambda: bn(xc),
         module(lambda nn: nn.BatchNorm2d(64).eval(), xc)),
    ]


def best_us(f, number, repeat):
    f()
    return min(timeit.repeat(f, number=number, repeat=repeat)) / number * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32,float16,bfloat16")
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args(argv)
    torch = None if a.no_torch else optional_torch()    # None when not installed
    rng = np.random.default_rng(0)
    print(f"cnorm {cnorm.__version__}, {cnorm.get_num_threads()} threads; "
          f"torch {'-' if torch is None else torch.__version__}; best of {a.repeat} x "
          f"{a.number} calls, microseconds a call")
    print(f"{'call':38s} {'dtype':9s} {'cnorm':>7s} {'torch':>7s} {'ratio':>6s}")
    for name in a.dtype.split(","):
        try:
            dt = np.dtype(dtype_value(name.strip()))
        except (TypeError, ValueError) as e:
            print(f"{name}: skipped ({e})")
            continue
        for label, ours, theirs in cases(dt, rng):
            c = best_us(ours, a.number, a.repeat)
            t = None
            if torch is not None and theirs is not None:
                try:
                    t = best_us(theirs(torch), a.number, a.repeat)
                except (RuntimeError, TypeError) as e:   # a dtype torch's CPU op lacks
                    print(f"  (torch {label} {dt.name}: {type(e).__name__})")
            ts = "-" if t is None else f"{t:7.2f}"
            ratio = "-" if t is None else f"{t / c:5.1f}x"
            print(f"{label:38s} {dt.name:9s} {c:7.2f} {ts:>7s} {ratio:>6s}")


if __name__ == "__main__":
    main()
