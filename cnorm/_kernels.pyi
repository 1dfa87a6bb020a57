# Stubs for the compiled kernels (cnorm._kernels and its _v3 build).
# Private: the Python API validates every argument before calling these.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]

def bn_train(x: _F, y: _F, N: int, C: int, M: int, weight: _F | None, bias: _F | None,
             running_mean: _F | None, running_var: _F | None, mean_out: _F | None,
             invstd_out: _F | None, eps: float, momentum: float, method: str | None, act: int,
             stream: bool) -> None: ...
def bn_train_fast(x: object, weight: object, bias: object, running_mean: object,
                  running_var: object, momentum: object, eps: object, axis: object,
                  want_stats: bool, stream_bytes: int,
                  out: object = ...) -> tuple[_F, _F | None, _F | None] | None: ...
def bn_infer_fast(x: object, weight: object, bias: object, running_mean: object,
                  running_var: object, momentum: object, eps: object, axis: object,
                  stream_bytes: int, out: object = ...) -> _F | None: ...
def bn_backward_fast(dy: object, x: object, mean: object, invstd: object, weight: object,
                     training: object, axis: object, stream_bytes: int,
                     out: object = ...) -> tuple[_F, _F, _F] | None: ...
def bn_infer(x: _F, y: _F, N: int, C: int, M: int, weight: _F | None, bias: _F | None,
             running_mean: _F, running_var: _F, eps: float, act: int, stream: bool) -> None: ...
def bn_backward(dy: _F, x: _F, dx: _F, N: int, C: int, M: int, mean: _F, invstd: _F,
                weight: _F | None, dweight: _F, dbias: _F, training: bool,
                stream: bool) -> None: ...
def norm_rows(x: _F, y: _F, R: int, H: int, centred: bool, act: int,
              weight: _F | None, bias: _F | None, mean_out: _F | None, rstd_out: _F | None,
              eps: float, method: str | None, stream: bool, residual: _F | None = None,
              h_out: _F | None = None) -> None: ...
def norm_rows_backward(dy: _F, x: _F, dx: _F, R: int, H: int, mean: _F | None, rstd: _F,
                       weight: _F | None, dweight: _F, dbias: _F | None,
                       stream: bool) -> None: ...
def norm_planes(x: _F, y: _F, P: int, Q: int, S: int, Qp: int, run: int, weight: _F | None,
                bias: _F | None, mean_out: _F | None, rstd_out: _F | None, eps: float,
                method: str | None, act: int, stream: bool,
                var_out: _F | None = None) -> None: ...
def norm_planes_backward(dy: _F, x: _F, dx: _F, P: int, Q: int, S: int, Qp: int, run: int,
                         mean: _F, rstd: _F, weight: _F | None, dweight: _F, dbias: _F,
                         stream: bool) -> None: ...
def norm_groups(x: _F, y: _F, N: int, HW: int, C: int, G: int, weight: _F | None,
                bias: _F | None, mean_out: _F | None, rstd_out: _F | None, eps: float,
                method: str | None, act: int, stream: bool,
                var_out: _F | None = None) -> None: ...
def norm_groups_backward(dy: _F, x: _F, dx: _F, N: int, HW: int, C: int, G: int, mean: _F,
                         rstd: _F, weight: _F | None, dweight: _F, dbias: _F,
                         stream: bool) -> None: ...
def moment_stats(x: _F, A: int, B: int, C: int, samples: bool, method: str | None,
                 mean: npt.NDArray[np.float64], m2: npt.NDArray[np.float64]) -> None: ...
def set_bfloat16_type(t: int) -> None: ...
def set_prefetch_bursts(on: bool) -> None: ...
def rows_fast(x: object, normalized_shape: object, weight: object, bias: object, eps: object,
              centred: bool, default_eps: float, default_eps64: float,
              stream_bytes: int,
              out: object = ...) -> _F | None: ...
def rows_forward_fast(x: object, normalized_shape: object, weight: object, bias: object,
                      eps: object, centred: bool, default_eps: float, default_eps64: float,
                      stream_bytes: int,
                      out: object = ...) -> tuple[_F, _F | None, _F] | None: ...
def add_rows_fast(x: object, residual: object, normalized_shape: object, weight: object,
                  bias: object, eps: object, centred: bool, default_eps: float,
                  default_eps64: float, stream_bytes: int,
                  want_stats: bool = ...) -> tuple[_F, _F | None, _F | None] | None: ...
def groups_fast(x: object, num_groups: object, weight: object, bias: object, eps: object,
                axis: object, act: int, instance: bool,
                out: object = ...) -> tuple[_F, _F, _F] | None: ...
def rows_backward_fast(dy: object, x: object, mean: object, rstd: object, weight: object,
                       centred: bool, stream_bytes: int,
                       out: object = ...) -> tuple[_F, _F, _F | None] | None: ...
