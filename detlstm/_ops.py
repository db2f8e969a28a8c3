"""The registered operators: the compiled library and the operators' fake kernels.

The schemas and the CPU (and CUDA) implementations live in C++ (csrc/ops.cpp); this module adds the fake
kernels that torch.library expects from Python so torch.compile can trace (the derivatives and
batching rules are registered in _autograd.py).
"""

import torch

from ._library import HAS_CUDA_KERNELS, _C, _C_cuda

ops = torch.ops.detlstm


@torch.library.register_fake("detlstm::lstm_forward")
def _lstm_forward_fake(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                       dropout, train, seed, proj_size):
    steps, batch, _ = input.shape
    hidden, real_hidden = c0.shape[-1], h0.shape[-1]  # real_hidden: proj_size with projections
    directions = 2 if bidirectional else 1
    return (
        input.new_empty((steps, batch, directions * real_hidden)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        input.new_empty((num_layers - 1, steps, batch, directions * real_hidden)),
        input.new_empty((num_layers, directions, steps, batch, 4 * hidden)),
        input.new_empty((num_layers, directions, steps, batch, hidden)),
    )


@torch.library.register_fake("detlstm::lstm_inference")
def _lstm_inference_fake(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                         dropout, train, seed, proj_size):
    return _lstm_forward_fake(input, lengths, h0, c0, weights, has_biases, num_layers,
                              bidirectional, dropout, train, seed, proj_size)[:3]


@torch.library.register_fake("detlstm::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, output,
                        layer_out, gates, cells, has_biases, num_layers, bidirectional, dropout,
                        train, seed, proj_size):
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        torch.empty_like(c0, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights],
    )


@torch.library.register_fake("detlstm::canonical_unary")
def _canonical_unary_fake(x, fn):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("detlstm::philox4x32_10")
def _philox_fake(counters, key0, key1):
    return torch.empty_like(counters, memory_format=torch.contiguous_format)


def canonical_unary(x: torch.Tensor, fn: str) -> torch.Tensor:
    """Our exp, sigmoid or tanh (ARITHMETIC.md rule 6) on a float32 tensor, elementwise."""
    return ops.canonical_unary(x, fn)


def set_cuda_launch_variant(variant: int) -> int:
    """Force the CUDA kernels' launch shape (an index into cuda_launch_shapes(), 0 the default);
    returns the previous one. Results must not change with it: the tests use it as a stand-in for
    GPUs of other sizes."""
    if not HAS_CUDA_KERNELS:
        raise RuntimeError("detlstm.set_cuda_launch_variant: this build of detlstm has no CUDA kernels "
                           "(built without nvcc or a CUDA build of torch; DETLSTM_CUDA=1 forces one)")
    return _C_cuda.set_launch_variant(variant)


def cuda_launch_shapes() -> list:
    """The names of the CUDA kernels' launch shapes, by index (0 is the default; see
    csrc/cuda/launch_shapes.h); empty without CUDA kernels."""
    return list(_C_cuda.launch_shapes()) if HAS_CUDA_KERNELS else []


def set_cpu_variant(name: str = "") -> str:
    """Select the CPU kernel build ('generic', 'avx2', 'avx512', 'default'); '' only asks. Returns the previous."""
    return _C.set_cpu_variant(name)


def empty_cpu_cache() -> None:
    """Release the memory the CPU block cache holds (the large buffers earlier calls freed, kept for
    the next call's use; see docs/DESIGN.md). Like torch.cuda.empty_cache: results never change."""
    _C.empty_cpu_cache()


def set_cpu_cache_limit(limit_bytes: int = -1) -> int:
    """Set how many bytes of freed large CPU buffers detlstm keeps for the next call (default 1 GiB;
    0 keeps none and releases what is held); a negative value only asks. Returns the previous limit."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int):
        raise TypeError(f"set_cpu_cache_limit: limit_bytes must be an int, got {type(limit_bytes).__name__}")
    return _C.set_cpu_cache_limit(limit_bytes)


def cpu_cache_info() -> dict:
    """The CPU block cache's counters: hits and misses (large buffers served from the cache and
    from fresh memory, since the process started), cached_bytes, cached_blocks and limit_bytes."""
    return dict(_C.cpu_cache_info())


def set_cpu_cache_poison(on: bool) -> None:
    """Tests only: fill every block the CPU block cache keeps with 0xFF bytes (a NaN in float32 and
    float64), so that a kernel reading memory it had not written shows it in its results."""
    _C.set_cpu_cache_poison(bool(on))


def set_cpu_recurrence_split(name: str = "") -> str:
    """Tests only: how the CPU recurrences spread over threads: 'auto' (the default: chosen by thread
    count and shape), 'units' (a parallel region per step over blocks of hidden units) or
    'sequences' (each thread runs every step of its own group of sequences); '' only asks. Returns
    the previous setting. Both splits give the same bits."""
    return _C.set_cpu_recurrence_split(name)


def set_cpu_phase_timing(on: bool) -> None:
    """Turn the CPU driver's per-phase clock on or off (off by default). bench/phases.py uses it."""
    _C.set_cpu_phase_timing(bool(on))


def take_cpu_phase_times() -> dict:
    """{phase: (seconds, multiply-adds)} of the CPU driver summed since the last call (which resets
    them); zeros unless set_cpu_phase_timing(True)."""
    return dict(_C.take_cpu_phase_times())


def philox4x32_10(counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Philox4x32-10 blocks for an (N, 4) int64 tensor of 32-bit counter words and a 2-word key."""
    return ops.philox4x32_10(counters, key0, key1)
