# Stubs for the compiled layer-norm kernels (cnorm._layernorm and its _v3 build).
# Private: cnorm.layernorm validates every argument before calling these.
import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]

def layer_norm(x: _F, y: _F, R: int, H: int, weight: _F | None, bias: _F | None,
               mean_out: _F | None, rstd_out: _F | None, eps: float, method: str | None,
               stream: bool) -> None: ...
def layer_norm_backward(dy: _F, x: _F, dx: _F, R: int, H: int, mean: _F, rstd: _F,
                        weight: _F | None, dweight: _F, dbias: _F, stream: bool) -> None: ...
