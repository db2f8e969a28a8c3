"""detlstm: a drop-in torch.nn.LSTM with bitwise reproducible results on CPU and CUDA."""

from ._build_config import VERSION
from ._ops import (HAS_CUDA_KERNELS, canonical_unary, cpu_cache_info, empty_cpu_cache, set_cpu_cache_limit,
                   set_cpu_variant, set_cuda_launch_variant)
from .module import LSTM
from .utils import convert, reverse_padded

__all__ = ["LSTM", "convert", "reverse_padded", "canonical_unary", "set_cpu_variant",
           "set_cuda_launch_variant", "empty_cpu_cache", "set_cpu_cache_limit", "cpu_cache_info",
           "HAS_CUDA_KERNELS"]
__version__ = VERSION
