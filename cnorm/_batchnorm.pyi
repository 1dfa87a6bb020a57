# Stubs for the compiled batch-norm kernels (cnorm._batchnorm and its _v3 build).
# Private: cnorm.batchnorm validates every argument before calling these.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]

def train(x: _F, y: _F, N: int, C: int, M: int, weight: _F | None, bias: _F | None,
          running_mean: _F | None, running_var: _F | None, mean_out: _F | None,
          invstd_out: _F | None, eps: float, momentum: float, method: str | None, relu: bool,
          stream: bool) -> None: ...
def inference(x: _F, y: _F, N: int, C: int, M: int, weight: _F | None, bias: _F | None,
              running_mean: _F, running_var: _F, eps: float, relu: bool, stream: bool) -> None: ...
def backward(dy: _F, x: _F, dx: _F, N: int, C: int, M: int, mean: _F, invstd: _F,
             weight: _F | None, dweight: _F, dbias: _F, training: bool, stream: bool) -> None: ...
