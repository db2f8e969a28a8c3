"""The registered operators: loading the compiled library, fake kernels and autograd.

The schemas and the CPU (and CUDA) implementations live in C++ (csrc/ops.cpp); this module adds what
torch.library expects from Python: fake kernels so torch.compile can trace, and the autograd formula,
which calls the registered backward operator.
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


def _setup_context(ctx, inputs, output):
    (input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout, train,
     seed, proj_size) = inputs
    out, _, _, layer_out, gates, cells = output
    ctx.num_weights = len(weights)
    ctx.config = (has_biases, num_layers, bidirectional, dropout, train)
    ctx.proj_size = proj_size
    ctx.save_for_backward(input, lengths, h0, c0, seed, out, layer_out, gates, cells, *weights)
    ctx.mark_non_differentiable(layer_out, gates, cells)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_layer_out, _grad_gates, _grad_cells):
    input, lengths, h0, c0, seed, out, layer_out, gates, cells, *weights = ctx.saved_tensors
    # Outputs the loss did not use arrive as None: their gradient is zero.
    grad_output = torch.zeros_like(out) if grad_output is None else grad_output
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n
    grad_input, grad_h0, grad_c0, grad_weights = ops.lstm_backward(
        grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, out, layer_out, gates,
        cells, *ctx.config, seed, ctx.proj_size)
    return (grad_input, None, grad_h0, grad_c0, list(grad_weights), None, None, None, None, None,
            None, None)


torch.library.register_autograd("detlstm::lstm_forward", _backward, setup_context=_setup_context)


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
    """Select the CPU kernel build ('generic', 'avx2', 'default'); '' only asks. Returns the previous."""
    return _C.set_cpu_variant(name)


def philox4x32_10(counters: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Philox4x32-10 blocks for an (N, 4) int64 tensor of 32-bit counter words and a 2-word key."""
    return ops.philox4x32_10(counters, key0, key1)
