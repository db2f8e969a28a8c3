"""Derivatives of the LSTM: first derivatives from our kernels, higher ones from the reference.

* First derivatives (loss.backward, autograd.grad, torch.func.grad/vjp): detlstm::lstm_backward,
  our kernels' bits.
* Derivatives of those (create_graph=True, gradgradcheck, Hessian-vector products) and forward mode
  (torch.func.jvp, jacfwd, torch.autograd.forward_ad): the same model written in differentiable torch
  operations (_reference.py), differentiated by autograd; they never change a first derivative's bits.
* vmap: both operators batch by running once per vmapped slice (_vmap_by_loop), so every slice gets
  exactly the bits it would get alone.

Two entry points carry this: LSTMFunction, the autograd.Function that detlstm.LSTM calls (functorch
needs setup_context and jvp, which register_autograd cannot give), and the operator-level
registrations for callers of torch.ops.detlstm.* directly (torch.compile's traced graphs, opcheck).
"""

import contextlib
import inspect

import torch
from torch.autograd import forward_ad

from . import _reference
from ._ops import ops

# lstm_forward's arguments after the tensors: has_biases, num_layers, bidirectional, dropout, train.
_CONFIG_ARGS = 5
# Where the weights start among LSTMFunction's and LSTMBackwardFunction's arguments.
_FORWARD_WEIGHTS = 11
_BACKWARD_WEIGHTS = 18


def _zeros_for_none(values, likes):
    return [torch.zeros_like(like) if value is None else value for value, like in zip(values, likes)]


def _reference_forward(lengths, seed, config, proj_size):
    """The reference as a function of the differentiable tensors only: (x, h0, c0, *weights)."""
    def forward(x, h0, c0, *weights):
        return _reference.lstm_forward(x, lengths, h0, c0, list(weights), *config, seed, proj_size)
    return forward


def _reference_first_grads(lengths, seed, config, proj_size):
    """The reference's first derivatives as a function of (grad_output, grad_h_n, grad_c_n, x, h0,
    c0, *weights): the function whose derivatives are the LSTM's second derivatives."""
    forward = _reference_forward(lengths, seed, config, proj_size)

    def first_grads(grad_output, grad_h_n, grad_c_n, x, h0, c0, *weights):
        _, pull_back = torch.func.vjp(forward, x, h0, c0, *weights)
        return tuple(pull_back((grad_output, grad_h_n, grad_c_n)))
    return first_grads


def _jacobian_times(function, primals, tangents):
    """J @ tangents for the Jacobian J of `function` at `primals`, by reverse mode twice: u -> J^T u
    is linear, so its own vjp with cotangent `tangents` is J @ tangents. (Forward-mode AD inside an
    autograd.Function's jvp would nest a second dual level under torch.autograd.forward_ad, which
    PyTorch does not support.)"""
    outputs, pull_back = torch.func.vjp(function, *primals)
    _, pull_back_linear = torch.func.vjp(pull_back, tuple(torch.zeros_like(o) for o in outputs))
    return pull_back_linear(tuple(tangents))[0]


def second_order(lengths, seed, config, proj_size, primals, cotangents):
    """Cotangents of (grad_output, grad_h_n, grad_c_n, x, h0, c0, *weights) for cotangents of the
    first derivatives (grad_input, grad_h0, grad_c0, *grad_weights): double backward."""
    first_grads = _reference_first_grads(lengths, seed, config, proj_size)
    _, pull_back = torch.func.vjp(first_grads, *primals)
    return pull_back(tuple(_zeros_for_none(cotangents, primals[3:])))


def _legacy_vmap_level() -> int:
    """The nesting depth of torch._vmap_internals' vmap (what autograd.grad(is_grads_batched=True),
    gradcheck's batched-gradient check and jacobian(vectorize=True) use); 0 outside it."""
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return level - 1


def _unbatch(tensor, level):
    """(batch size or None, the tensor with its batch dimension first) for a tensor that may be
    batched at `level`: unbatched, it comes back expanded to 1 and 2 rows alike."""
    one, two = (torch._remove_batch_dim(tensor, level, size, 0) for size in (1, 2))
    return (None, tensor) if one.shape[0] != two.shape[0] else (one.shape[0], one)


def _lstm_backward_op(grad_output, grad_h_n, grad_c_n, *rest):
    """ops.lstm_backward, which also runs under torch._vmap_internals' vmap: its fallback cannot
    batch an operator with a tensor-list argument, so there the batched output gradients (the only
    batched arguments in a backward) are unwrapped and the operator runs once per slice."""
    level = _legacy_vmap_level()
    if level == 0:
        return ops.lstm_backward(grad_output, grad_h_n, grad_c_n, *rest)
    unbatched = [_unbatch(g, level) for g in (grad_output, grad_h_n, grad_c_n)]
    sizes = {size for size, _ in unbatched if size is not None}
    if not sizes:
        return ops.lstm_backward(grad_output, grad_h_n, grad_c_n, *rest)
    size = sizes.pop()
    slices = [g if batch is not None else g.expand(size, *g.shape) for batch, g in unbatched]
    results = [ops.lstm_backward(go, gh, gc, *rest) for go, gh, gc in zip(*slices)]
    grad_input, grad_h0, grad_c0, grad_weights = _stack(results)[0]
    rebatch = lambda t: torch._add_batch_dim(t, 0, level)  # noqa: E731
    return (rebatch(grad_input), rebatch(grad_h0), rebatch(grad_c0),
            [rebatch(g) for g in grad_weights])


class LSTMBackwardFunction(torch.autograd.Function):
    """detlstm::lstm_backward as a differentiable function of the output gradients, the input, the
    initial state and the weights (the saved activations are caches of those). Arguments: the
    operator's, with the weights last (autograd.Function sees only top-level tensors) and the
    config as separate scalars (functorch's generated batching rule takes no nested tuples)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, output, layer_out, gates,
                cells, seed, has_biases, num_layers, bidirectional, dropout, train, proj_size,
                *weights):
        grad_input, grad_h0, grad_c0, grad_weights = _lstm_backward_op(
            grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, list(weights), output,
            layer_out, gates, cells, has_biases, num_layers, bidirectional, dropout, train, seed,
            proj_size)
        return (grad_input, grad_h0, grad_c0, *grad_weights)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0 = inputs[:7]
        weights = inputs[_BACKWARD_WEIGHTS:]
        ctx.save_for_backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, *weights)
        ctx.save_for_forward(grad_output, grad_h_n, grad_c_n, input, h0, c0, *weights)
        ctx.lengths, ctx.seed = lengths, inputs[11]
        ctx.config, ctx.proj_size = tuple(inputs[12:12 + _CONFIG_ARGS]), inputs[12 + _CONFIG_ARGS]

    @staticmethod
    def backward(ctx, *cotangents):
        primals = ctx.saved_tensors
        grads = second_order(ctx.lengths, ctx.seed, ctx.config, ctx.proj_size, primals, cotangents)
        grad_output, grad_h_n, grad_c_n, grad_input, grad_h0, grad_c0, *grad_weights = grads
        return (grad_output, grad_h_n, grad_c_n, grad_input, None, grad_h0, grad_c0,
                *([None] * (_BACKWARD_WEIGHTS - 7)), *grad_weights)

    @staticmethod
    def jvp(ctx, *tangents):
        primals = ctx.saved_tensors
        tangents = tangents[:4] + tangents[5:7] + tangents[_BACKWARD_WEIGHTS:]
        first_grads = _reference_first_grads(ctx.lengths, ctx.seed, ctx.config, ctx.proj_size)
        return _jacobian_times(first_grads, primals, _zeros_for_none(tangents, primals))


class LSTMFunction(torch.autograd.Function):
    """detlstm::lstm_forward with its derivatives, as detlstm.LSTM calls it. Returns the operator's
    six outputs; the last three (saved activations) are not differentiable. Arguments as
    LSTMBackwardFunction's: the weights last, the config as scalars."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, lengths, h0, c0, seed, has_biases, num_layers, bidirectional, dropout, train,
                proj_size, *weights):
        return _without_autograd(ops.lstm_forward, input, lengths, h0, c0, list(weights),
                                 has_biases, num_layers, bidirectional, dropout, train, seed,
                                 proj_size)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, lengths, h0, c0, seed = inputs[:5]
        weights = inputs[_FORWARD_WEIGHTS:]
        out, _, _, layer_out, gates, cells = output
        ctx.save_for_backward(input, h0, c0, out, layer_out, gates, cells, *weights)
        ctx.save_for_forward(input, h0, c0, *weights)
        ctx.lengths, ctx.seed = lengths, seed
        ctx.config, ctx.proj_size = tuple(inputs[5:5 + _CONFIG_ARGS]), inputs[5 + _CONFIG_ARGS]
        ctx.mark_non_differentiable(layer_out, gates, cells)
        # Gradients of unused outputs arrive as None (zeros made below only where the kernel needs
        # them): materialized, the saved gates, cells and layer outputs would each get a tensor of
        # zeros, written on every backward (~3% of one at hidden 512, and their memory).
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _layer_out, _gates, _cells):
        input, h0, c0, out, layer_out, gates, cells, *weights = ctx.saved_tensors
        grad_output, grad_h_n, grad_c_n = _zeros_for_none((grad_output, grad_h_n, grad_c_n),
                                                          (out, h0, c0))
        if _no_derivative_possible():  # a plain backward (no create_graph): nothing to record
            grad_input, grad_h0, grad_c0, grad_weights = _without_autograd(
                _lstm_backward_op, grad_output, grad_h_n, grad_c_n, input, ctx.lengths, h0, c0,
                weights, out, layer_out, gates, cells, *ctx.config, ctx.seed, ctx.proj_size)
        else:
            grad_input, grad_h0, grad_c0, *grad_weights = LSTMBackwardFunction.apply(
                grad_output, grad_h_n, grad_c_n, input, ctx.lengths, h0, c0, out, layer_out,
                gates, cells, ctx.seed, *ctx.config, ctx.proj_size, *weights)
        return (grad_input, None, grad_h0, grad_c0, *([None] * (_FORWARD_WEIGHTS - 4)),
                *grad_weights)

    @staticmethod
    def jvp(ctx, input_t, _lengths_t, h0_t, c0_t, *rest):
        primals = ctx.saved_tensors
        tangents = _zeros_for_none((input_t, h0_t, c0_t, *rest[_FORWARD_WEIGHTS - 4:]), primals)
        forward = _reference_forward(ctx.lengths, ctx.seed, ctx.config, ctx.proj_size)
        return (*_jacobian_times(forward, primals, tangents), None, None, None)


# torch.autograd.Function.apply binds its arguments to forward's signature on every call (for
# setup_context), and inspect.signature builds that signature anew each time: ~20 us of a ~100 us
# call at a small shape. A signature set on the function is read instead; it is the same signature.
for _function in (LSTMFunction, LSTMBackwardFunction):
    _function.forward.__signature__ = inspect.signature(_function.forward)
del _function


def _no_derivative_possible():
    """Whether nothing can ask this call for a derivative: gradients are off and no forward-mode dual
    level is open (torch.func.jvp and jacfwd open one; torch.func.grad turns gradients on; vmap has
    the operator's own rule). Then the operator is called alone: LSTMFunction would record nothing,
    and its apply is ~40% of a call at small shapes. Where torch lacks the private probe, no."""
    return not torch.is_grad_enabled() and getattr(forward_ad, "_current_level", 0) < 0


def _without_autograd(function, *args):
    """function(*args) with the operators it calls dispatched past their Autograd kernels, for calls
    _no_derivative_possible says nothing can differentiate: there the operators' registered
    autograd (register_autograd below) would only find that out in Python and redispatch, ~5 us of
    a ~45 us call at a small shape. Transforms and modes (vmap, fake tensors) sit outside Autograd
    and still see the call. A torch without the guard takes the registered road (same results)."""
    with _BELOW_AUTOGRAD():
        return function(*args)


_BELOW_AUTOGRAD = getattr(torch._C, "_AutoDispatchBelowAutograd", contextlib.nullcontext)


def lstm(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout, train,
         seed, proj_size):
    """detlstm::lstm_forward's (output, h_n, c_n), differentiable to any order and in forward mode.
    Under torch.compile and torch.jit.trace the operator is called directly (dynamo cannot trace an
    autograd.Function with a custom jvp; a trace must record the operator to be saved and loaded):
    its registered autograd gives the same derivatives, forward mode aside. A call no derivative can
    be asked of (_no_derivative_possible: inference under torch.no_grad) runs lstm_inference, which
    keeps no activations for a backward: the same bits in less memory."""
    operator_args = (input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                     dropout, train, seed, proj_size)
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        return ops.lstm_inference(*operator_args)  # a compiled no_grad call: nothing to keep
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return ops.lstm_forward(*operator_args)[:3]
    if _no_derivative_possible():
        return _without_autograd(ops.lstm_inference, *operator_args)
    output, h_n, c_n, *_ = LSTMFunction.apply(input, lengths, h0, c0, seed, has_biases, num_layers,
                                              bidirectional, dropout, train, proj_size, *weights)
    return output, h_n, c_n


# --------------------------------------------------------------------------------------------------
# Operator-level registrations, for callers of torch.ops.detlstm.* (and the graphs torch.compile
# traces): the same derivatives, through register_autograd and register_vmap.
# --------------------------------------------------------------------------------------------------

def _forward_setup_context(ctx, inputs, output):
    (input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout, train,
     seed, proj_size) = inputs
    out, _, _, layer_out, gates, cells = output
    ctx.num_weights = len(weights)
    ctx.config = (has_biases, num_layers, bidirectional, dropout, train)
    ctx.proj_size = proj_size
    ctx.save_for_backward(input, lengths, h0, c0, seed, out, layer_out, gates, cells, *weights)
    ctx.mark_non_differentiable(layer_out, gates, cells)
    ctx.set_materialize_grads(False)  # as in LSTMFunction.setup_context


def _forward_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_layer_out, _grad_gates,
                      _grad_cells):
    input, lengths, h0, c0, seed, out, layer_out, gates, cells, *weights = ctx.saved_tensors
    # Outputs the loss did not use arrive as None: their gradient is zero.
    grad_output, grad_h_n, grad_c_n = _zeros_for_none((grad_output, grad_h_n, grad_c_n),
                                                      (out, h0, c0))
    grad_input, grad_h0, grad_c0, grad_weights = _lstm_backward_op(
        grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, out, layer_out, gates,
        cells, *ctx.config, seed, ctx.proj_size)
    return (grad_input, None, grad_h0, grad_c0, list(grad_weights), None, None, None, None, None,
            None, None)


def _backward_setup_context(ctx, inputs, output):
    (grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, _output, _layer_out, _gates,
     _cells, *config_seed_proj) = inputs
    ctx.config = tuple(config_seed_proj[:_CONFIG_ARGS])
    ctx.seed, ctx.proj_size, ctx.lengths = config_seed_proj[-2], config_seed_proj[-1], lengths
    ctx.save_for_backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, *weights)


def _backward_backward(ctx, grad_grad_input, grad_grad_h0, grad_grad_c0, grad_grad_weights):
    primals = ctx.saved_tensors
    cotangents = (grad_grad_input, grad_grad_h0, grad_grad_c0, *grad_grad_weights)
    grads = second_order(ctx.lengths, ctx.seed, ctx.config, ctx.proj_size, primals, cotangents)
    grad_output, grad_h_n, grad_c_n, grad_input, grad_h0, grad_c0, *grad_weights = grads
    return (grad_output, grad_h_n, grad_c_n, grad_input, None, grad_h0, grad_c0, list(grad_weights),
            None, None, None, None, *([None] * (_CONFIG_ARGS + 2)))


torch.library.register_autograd("detlstm::lstm_forward", _forward_backward,
                                setup_context=_forward_setup_context)
torch.library.register_autograd("detlstm::lstm_backward", _backward_backward,
                                setup_context=_backward_setup_context)


def _inference_backward(ctx, *grads):
    raise RuntimeError(
        "detlstm::lstm_inference keeps no activations and has no derivative: call "
        "torch.ops.detlstm.lstm_forward (or detlstm.LSTM, which picks it) for a call to differentiate")


# Called directly with tensors that require grad, lstm_inference refuses a backward with a clear
# error instead of torch's warning that no autograd kernel is registered.
torch.library.register_autograd("detlstm::lstm_inference", _inference_backward)


def _slice(value, dim, index):
    if dim is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_slice(v, d, index) for v, d in zip(value, dim)]
    return value.select(dim, index)


def _stack(results):
    """Per-slice results (tuples of tensors and tensor lists) stacked along a new dimension 0."""
    first = results[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(results), 0
    stacked = [_stack([r[k] for r in results]) for k in range(len(first))]
    return [s for s, _ in stacked], [d for _, d in stacked]


def _vmap_by_loop(op):
    """A batching rule that runs `op` once per vmapped slice and stacks the results: every slice
    gets the bits it would get alone (the seed is the caller's, the same for every slice)."""
    def rule(info, in_dims, *args):
        results = [op(*[_slice(a, d, i) for a, d in zip(args, in_dims)])
                   for i in range(info.batch_size)]
        values, dims = _stack(results)
        return tuple(values), tuple(dims)
    return rule


torch.library.register_vmap("detlstm::lstm_forward", _vmap_by_loop(ops.lstm_forward))
torch.library.register_vmap("detlstm::lstm_inference", _vmap_by_loop(ops.lstm_inference))
torch.library.register_vmap("detlstm::lstm_backward", _vmap_by_loop(ops.lstm_backward))
