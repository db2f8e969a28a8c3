"""Loading the compiled extensions: detlstm._C (the operators and their CPU kernels, always) and
detlstm._C_cuda (the CUDA kernels, where they were built)."""

from . import _C  # noqa: F401  (registers the detlstm operators and their CPU kernels)

try:  # the CUDA kernels are a separate extension, built where nvcc and a CUDA torch exist
    from . import _C_cuda
except ImportError:
    _C_cuda = None

HAS_CUDA_KERNELS = _C_cuda is not None
