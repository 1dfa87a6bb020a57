# The x86-64-v3 build of cnorm._layernorm: the same functions.
from cnorm._layernorm import layer_norm as layer_norm, layer_norm_backward as layer_norm_backward
