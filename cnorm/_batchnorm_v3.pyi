# The x86-64-v3 build of cnorm._batchnorm: the same functions.
from cnorm._batchnorm import backward as backward, inference as inference, train as train
