"""Argument checking shared by every cnorm operation.

Each helper raises TypeError for a wrong type and ValueError for a wrong
value, with a message that names the argument and says what was expected.
None of them modifies anything.
"""

import numbers
import operator
from collections.abc import Sequence

import numpy as np

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
F16 = np.dtype(np.float16)
_FLOAT_DTYPES = (F32, F64, F16)
DTYPE_NAMES = "float32, float64, float16 or bfloat16"
INF = float("inf")
METHODS = ("two_pass", "welford")


def _type_name(obj):
    return type(obj).__name__


def bfloat16():
    """ml_dtypes' bfloat16 dtype, or None when ml_dtypes is not installed.  Imported
    on first need (an array that may be bfloat16), so that cnorm's import does not
    pay for it."""
    global _BF16
    if _BF16 is False:
        try:
            import ml_dtypes
        except ImportError:
            _BF16 = None
        else:
            _BF16 = np.dtype(ml_dtypes.bfloat16)
            from cnorm._dispatch import kernels
            kernels("_kernels").set_bfloat16_type(_BF16.num)   # the C fast paths take it now
    return _BF16


_BF16 = False     # not looked up yet


def param_dtype(dt):
    """The dtype of parameters, statistics and gradients of weights for data of dtype
    dt: float64 for float64 data, float32 for float32, float16 and bfloat16."""
    return F64 if dt == F64 else F32


def float_array(x, name):
    """x as an ndarray of one of the storage dtypes (array-likes are converted)."""
    if type(x) is np.ndarray and (x.dtype is F32 or x.dtype is F64):
        return x                                            # the common case, first
    if type(x) is not np.ndarray:
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists, objects numpy cannot take
            raise TypeError(f"{name} must be an array of {DTYPE_NAMES}, "
                            f"got an object of type {_type_name(x)} ({exc})") from None
    dt = x.dtype
    if dt in _FLOAT_DTYPES:
        return x
    if dt.kind == "f" and dt.newbyteorder("=") in _FLOAT_DTYPES:
        return x.astype(dt.newbyteorder("="))  # non-native byte order: convert
    if dt.itemsize == 2 and dt.name == "bfloat16" and dt == bfloat16():
        return x
    raise TypeError(f"{name} must have dtype {DTYPE_NAMES}, got {dt}")


def grad_array(dy, x, name="dy"):
    """The gradient dy of a backward call: a float array of x's shape (its dtype is cast
    by the caller)."""
    dy = float_array(dy, name)
    if dy.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {x.shape}, got {dy.shape}")
    return dy


def real_array(v, name):
    """np.asarray(v), which must hold real numbers (float, int, unsigned or bool)."""
    try:
        a = np.asarray(v)
    except Exception as exc:
        raise TypeError(f"{name} must be an array of real numbers, "
                        f"got an object of type {_type_name(v)} ({exc})") from None
    if a.dtype.kind not in "fiub" and not (a.dtype.name == "bfloat16" and a.dtype == bfloat16()):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def like_array(v, name, dtype, shape):
    """A read-only parameter (weight, bias, ...) cast to dtype, C-contiguous, of the given shape."""
    if v is None or (type(v) is np.ndarray and v.dtype is dtype and v.shape == shape
                     and v.flags.c_contiguous):
        return v                                            # None, or already right
    a = np.ascontiguousarray(real_array(v, name), dtype=dtype)   # no copy when v is right
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def inplace_array(v, name, dtype, shape):
    """An array updated in place (running statistics): exact dtype, shape, writeable."""
    if type(v) is np.ndarray and v.dtype is dtype and v.shape == shape and v.flags.writeable:
        return v
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place), "
                        f"got {_type_name(v)}")
    if v.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (for x of this dtype), got {v.dtype}")
    if v.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {v.shape}")
    if not v.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is updated in place)")
    return v


def out_array(out, x, name="out"):
    """Check out= against x.  Returns out (which may be x itself)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {_type_name(out)}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if out.dtype != x.dtype:
        raise ValueError(f"{name} must have dtype {x.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def check_overlap(out, inputs, name="out"):
    """out may be one of the inputs exactly, but must not partly overlap any of them."""
    for arg, a in inputs:
        if out is a or not np.may_share_memory(out, a):
            continue
        same = (out.__array_interface__["data"][0] == a.__array_interface__["data"][0]
                and out.strides == a.strides)
        if same:
            continue
        try:
            overlap = np.shares_memory(out, a, max_work=1 << 20)
        except np.exceptions.TooHardError:   # an exotic stride pattern: assume the worst
            overlap = True
        if overlap:
            raise ValueError(f"{name} overlaps {arg} without being the same array view; "
                             f"pass {name}={arg} for in-place work, or a separate buffer")


def output_buffer(out, x, inputs, name="out"):
    """Check out= and pick where a kernel writes: (out, buffer).

    The buffer is out itself when it is C-contiguous (it may be one of the
    inputs, for in-place work), else a new C-contiguous array that `deliver`
    copies into out afterwards.  With out None, (None, a new array).
    """
    if out is None:
        return None, np.empty(x.shape, dtype=x.dtype)
    out = out_array(out, x, name)
    check_overlap(out, inputs, name)
    if out.flags.c_contiguous:
        return out, out
    return out, np.empty(x.shape, dtype=x.dtype)


def deliver(out, buf):
    """The result of a call that wrote into buf (see output_buffer)."""
    if out is None or out is buf:
        return buf
    out[...] = buf
    return out


def real_number(v, name, expected="a real number"):
    """float(v) for a real number: a Python or NumPy int or float, or a 0-d array of one.

    bool, str, bytes, complex and everything else are a TypeError naming `name`;
    `expected` says what the caller wants (for the message).
    """
    if type(v) is np.ndarray and v.ndim == 0 and v.dtype.kind in "fiu":
        v = v[()]
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)):
        try:
            return float(v)
        except OverflowError:                 # an int too large for a float
            return INF if v > 0 else -INF
    raise TypeError(f"{name} must be {expected}, got {_type_name(v)}")


def int_value(v, name, expected="an integer"):
    """operator.index(v) for an integer (Python, NumPy, 0-d integer array); bool is a TypeError."""
    if type(v) is int:
        return v
    if not isinstance(v, (bool, np.bool_)):
        try:
            return operator.index(v)
        except TypeError:
            pass
    raise TypeError(f"{name} must be {expected}, got {_type_name(v)}")


def positive_int(v, name):
    i = int_value(v, name, "a positive integer")
    if i <= 0:
        raise ValueError(f"{name} must be a positive integer, got {i}")
    return i


def shape_value(v, name="normalized_shape"):
    """An int, or a sequence of ints, as a tuple of Python ints (bool, str and bytes are not)."""
    if type(v) is int:
        return (v,)
    if not isinstance(v, (Sequence, np.ndarray)) or isinstance(v, (str, bytes, bytearray)) or (
            isinstance(v, np.ndarray) and v.ndim == 0):
        return (int_value(v, name, "an int or a tuple of ints"),)
    try:
        return tuple(int_value(s, name) for s in v)
    except TypeError:
        raise TypeError(f"{name} must hold ints, got {v!r}") from None


def dtype_value(dtype, name="dtype"):
    """A layer's dtype argument: float32, float64, float16 or bfloat16 (anything
    np.dtype takes for them; the string "bfloat16" or ml_dtypes.bfloat16 when
    ml_dtypes is installed)."""
    if dtype is None:
        raise TypeError(f"{name} must be {DTYPE_NAMES}, got None")
    if isinstance(dtype, str) and dtype == "bfloat16" and bfloat16() is not None:
        return bfloat16()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be {DTYPE_NAMES}, got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES and not (dt.name == "bfloat16" and dt == bfloat16()):
        raise TypeError(f"{name} must be {DTYPE_NAMES}, got {dt}")
    return dt

def eps_value(eps):
    if type(eps) is float and 0.0 <= eps < INF:
        return eps
    e = real_number(eps, "eps", "a real number >= 0")
    if not (e >= 0.0 and e < INF):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return e


def momentum_value(momentum):
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    m = real_number(momentum, "momentum", "a real number in [0, 1]")
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return m


def method_value(method, default=None):
    """The variance method: one of METHODS, or default when method is None."""
    if method is None:
        return default
    if isinstance(method, str) and method in METHODS:
        return method
    raise ValueError(f"method must be None, 'two_pass' or 'welford', got {method!r}")


def axis_value(axis, ndim, name="axis"):
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    a = int_value(axis, name)
    if not -ndim <= a < ndim:
        raise ValueError(f"{name} {a} is out of range for an array of {ndim} dimensions")
    return a % ndim


def bool_value(v, name):
    if v is True or v is False or isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {_type_name(v)}")


ACTIVATIONS = {None: 0, "relu": 1, "silu": 2}   # the kernels' activation codes


def activation_value(activation, relu=False):
    """The kernels' code of an output activation: None, 'relu' or 'silu'.  relu=True is
    another spelling of activation='relu' (batch norm's older argument)."""
    relu = relu if relu is False else bool_value(relu, "relu")
    if activation is None:
        return 1 if relu else 0
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None, 'relu' or 'silu', got "
                        f"{_type_name(activation)}")
    code = ACTIVATIONS.get(activation)
    if code is None:
        raise ValueError(f"activation must be None, 'relu' or 'silu', got {activation!r}")
    if relu and code != 1:
        raise ValueError(f"relu=True contradicts activation={activation!r}: give one of them")
    return code
