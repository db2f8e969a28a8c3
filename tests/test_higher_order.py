"""Derivatives beyond loss.backward: double backward, torch.func (grad, vmap, jvp, jacfwd/jacrev),
forward-mode AD and batched gradients, each against nn.LSTM (the control) or against our own first
derivatives. First derivatives stay our kernels' bits whatever the transform; second derivatives and
tangents come from a differentiable model of the same LSTM (detlstm/_reference.py)."""

import contextlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import detlstm
from detlstm._ops import ops
from helpers import assert_bitwise_equal

# (num_layers, bidirectional, proj_size, lengths or None, dropout in training)
CASES = [
    (1, False, 0, None, 0.0),
    (2, True, 0, [3, 1], 0.0),
    (2, True, 2, [2, 3], 0.0),
    (2, False, 0, [3, 2], 0.5),
]
IDS = ["1layer", "bi2-lengths", "bi2-proj-lengths", "2layer-dropout"]
T, B, I, H = 3, 2, 2, 3


def _pair(layers, bidirectional, proj):
    torch.manual_seed(0)
    ours = detlstm.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, proj_size=proj).double()
    ref = nn.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, proj_size=proj).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _state(layers, bidirectional, proj, generator):
    rows = layers * (2 if bidirectional else 1)
    h0 = torch.randn(rows, B, proj or H, dtype=torch.float64, generator=generator)
    c0 = torch.randn(rows, B, H, dtype=torch.float64, generator=generator)
    return h0, c0


def _module_fn(model, lengths, dropout):
    """(x, h0, c0, *weights) -> (output, h_n, c_n) of detlstm.LSTM, training with a fixed seed when
    there is dropout (same masks on every call), so gradcheck's repeated calls are consistent."""
    names = [n for n, _ in model.named_parameters()]
    model.dropout = dropout
    model.train(dropout > 0)

    def fn(x, h0, c0, *weights):
        kwargs = {"dropout_seed": 11} if dropout > 0 else {}
        if lengths is not None:
            kwargs["lengths"] = lengths
        out, (h, c) = functional_call(model, dict(zip(names, weights)), (x, (h0, c0)), kwargs)
        return out, h, c
    return fn


def _inputs(model, layers, bidirectional, proj, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, dtype=torch.float64, generator=g)
    h0, c0 = _state(layers, bidirectional, proj, g)
    weights = [p.detach().clone() for p in model.parameters()]
    return [t.requires_grad_() for t in (x, h0, c0, *weights)]


def _function_and_inputs(case):
    layers, bidirectional, proj, lengths, dropout = case
    ours, _ = _pair(layers, bidirectional, proj)
    return _module_fn(ours, lengths, dropout), _inputs(ours, layers, bidirectional, proj)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradgradcheck(case):
    """Analytical second derivatives against numerical derivatives of our kernels' backward."""
    fn, inputs = _function_and_inputs(case)
    # fast mode: the same comparison along random directions (every analytical column of the
    # double backward costs a run of the Python reference)
    assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def _gradient_penalty(model, x):
    """Gradient penalty (double backward): d/dparams of |d loss / dx|^2."""
    out, (h, _) = model(x)
    (gx,) = torch.autograd.grad(out.square().sum() + h.sum(), x, create_graph=True)
    return torch.autograd.grad(gx.square().sum(), list(model.parameters()) + [x])


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_double_backward_matches_nn_lstm(case):
    layers, bidirectional, proj, _, _ = case
    ours, ref = _pair(layers, bidirectional, proj)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    got, want = _gradient_penalty(ours, x), _gradient_penalty(ref, x)
    for g, w in zip(got, want):
        assert w.abs().max() > 0  # the control's second derivatives are real, not zero
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


def test_first_derivatives_keep_kernel_bits_under_create_graph():
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, requires_grad=True, dtype=torch.float64)
    params = list(ours.parameters())
    plain = torch.autograd.grad(ours(x)[0].square().sum(), [x] + params)
    graphed = torch.autograd.grad(ours(x)[0].square().sum(), [x] + params, create_graph=True)
    for a, b in zip(plain, graphed):
        assert b.requires_grad
        assert_bitwise_equal(a, b.detach(), "first derivative with create_graph")


def test_without_the_below_autograd_guard_the_bits_stay(monkeypatch):
    """On a torch without torch._C._AutoDispatchBelowAutograd the operators go through their
    registered autograd instead: the same outputs and gradients."""
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)

    def run():
        with torch.no_grad():
            inferred = ours(x)[0]
        (gx,) = torch.autograd.grad(ours(x)[0].square().sum(), x)
        return inferred, gx
    want = run()
    monkeypatch.setattr(detlstm._autograd, "_BELOW_AUTOGRAD", contextlib.nullcontext)
    for got, expected, what in zip(run(), want, ("no_grad output", "input gradient")):
        assert_bitwise_equal(got, expected, f"{what} without the guard")


def test_inference_mode_gives_the_bits_of_a_call_with_gradients():
    """torch.inference_mode takes the no-derivative road too: inference tensors out, the same bits,
    PackedSequence input included."""
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 1]), enforce_sorted=False)
    for given in (x, packed):
        want_out, (want_h, want_c) = ours(given)
        with torch.inference_mode():
            out, (h, c) = ours(given)
        got = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
        want = want_out.data if isinstance(want_out, nn.utils.rnn.PackedSequence) else want_out
        assert got.is_inference() and not got.requires_grad
        for a, b, what in ((got, want, "output"), (h, want_h, "h_n"), (c, want_c, "c_n")):
            assert_bitwise_equal(a, b.detach(), f"inference_mode {what}")


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing_gives_the_plain_gradients(use_reentrant):
    """torch.utils.checkpoint runs the forward without recording (under no_grad when reentrant)
    and again with gradients in the backward: the gradients are the plain call's, bit for bit."""
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    params = [x] + list(ours.parameters())

    def gradients(run):
        for p in params:
            p.grad = None
        run(x).square().sum().backward()  # reentrant checkpoints refuse autograd.grad
        return [p.grad for p in params]
    plain = gradients(lambda v: ours(v)[0])
    checkpointed = gradients(lambda v: torch.utils.checkpoint.checkpoint(
        lambda u: ours(u)[0], v, use_reentrant=use_reentrant))
    for a, b in zip(plain, checkpointed):
        assert_bitwise_equal(b, a, f"checkpointed gradient (use_reentrant={use_reentrant})")


def test_plain_backward_calls_the_operator_alone(monkeypatch):
    """A backward without create_graph calls detlstm::lstm_backward without LSTMBackwardFunction
    (nothing can differentiate it); with create_graph the function is still the road, so the
    gradients stay differentiable (the bits of both: the test above)."""
    ours, _ = _pair(1, False, 0)
    x = torch.randn(T, B, I, requires_grad=True, dtype=torch.float64)

    def no_apply(*args):
        raise AssertionError("LSTMBackwardFunction.apply called by a plain backward")
    monkeypatch.setattr(detlstm._autograd.LSTMBackwardFunction, "apply", no_apply)
    (gx,) = torch.autograd.grad(ours(x)[0].sum(), x)
    assert not gx.requires_grad and gx.abs().max() > 0
    with pytest.raises(AssertionError, match="plain backward"):
        torch.autograd.grad(ours(x)[0].sum(), x, create_graph=True)


@pytest.mark.parametrize("used", ["output", "h_n", "c_n"])
@pytest.mark.parametrize("operator_level", [False, True])
def test_unused_outputs_get_zero_gradients(used, operator_level):
    """A loss of one output: the others' gradients reach the backward as None (grads are not
    materialized), and must count as zeros: the same bits as passing zeros for them explicitly."""
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = list(ours.parameters())
    h0 = torch.zeros(4, B, H, dtype=torch.float64)

    def run():
        if operator_level:
            return ops.lstm_forward(x, torch.full((B,), T), h0, h0, weights, True, 2, True, 0.0,
                                    False, torch.tensor(0), 0)[:3]
        out, (h_n, c_n) = ours(x)
        return out, h_n, c_n

    outs = run()
    k = ["output", "h_n", "c_n"].index(used)
    weight = torch.randn_like(outs[k])
    alone = torch.autograd.grad((outs[k] * weight).sum(), [x] + weights)
    outs = run()
    cotangents = [weight if j == k else torch.zeros_like(o) for j, o in enumerate(outs)]
    explicit = torch.autograd.grad(outs, [x] + weights, grad_outputs=cotangents)
    assert any(bool(g.abs().sum() > 0) for g in alone)
    for a, b in zip(alone, explicit):
        assert_bitwise_equal(a, b, f"gradient with only {used} used")


@pytest.mark.parametrize("operator_level", [False, True])
def test_no_tensor_made_for_saved_activations_gradients(operator_level):
    """The saved activations (layer_out, gates, cells) are outputs nobody differentiates: a backward
    must not make a tensor of their size (materialized zero gradients were 550 MiB of a training
    call's peak at the bench's large shape). Every aten op the backward runs is recorded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OutputShapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for r in (result if isinstance(result, (tuple, list)) else [result]):
                if isinstance(r, torch.Tensor):
                    self.made.append((str(func), tuple(r.shape)))
            return result

    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = list(ours.parameters())
    h0 = torch.zeros(4, B, H, dtype=torch.float64)
    outs = ops.lstm_forward(x, torch.full((B,), T), h0, h0, weights, True, 2, True, 0.0, True,
                            torch.tensor(0), 0)
    activation_shapes = {tuple(a.shape) for a in outs[3:]}
    loss = outs[0].sum() if operator_level else ours(x)[0].sum()
    recorder = OutputShapes()
    with recorder:
        loss.backward()
    assert any("lstm_backward" in f for f, _ in recorder.made), "the backward was not recorded"
    assert x.grad.abs().sum() > 0
    made = [(f, s) for f, s in recorder.made if s in activation_shapes]
    assert not made, f"the backward made tensors shaped like the saved activations: {made}"


def test_operator_level_double_backward():
    """torch.ops.detlstm.lstm_forward called directly: its registered backward is differentiable."""
    ours, ref = _pair(1, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    weights = list(ours.parameters())
    h0 = torch.zeros(2, B, H, dtype=torch.float64)
    out = ops.lstm_forward(x, torch.full((B,), T), h0, h0, weights, True, 1, True, 0.0, False,
                           torch.tensor(0), 0)[0]
    (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    got = torch.autograd.grad(gx.square().sum(), weights)
    (gx_ref,) = torch.autograd.grad(ref(x)[0].square().sum(), x, create_graph=True)
    want = torch.autograd.grad(gx_ref.square().sum(), list(ref.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


def test_func_grad_is_the_kernel_gradient():
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p):
        return functional_call(ours, p, (x,))[0].square().sum()
    got = grad(loss)(params)
    ours(x)[0].square().sum().backward()
    for name, p in ours.named_parameters():
        assert_bitwise_equal(got[name], p.grad, f"torch.func.grad {name}")


def test_func_vjp_is_the_kernel_gradient():
    """torch.func.vjp with a cotangent for every output: the bits of autograd.grad with the same
    cotangents, for the input and every parameter."""
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def run(p, inp):
        out, (h_n, c_n) = functional_call(ours, p, (inp,))
        return out, h_n, c_n
    outs, pullback = vjp(run, params, x)
    cotangents = tuple(torch.randn_like(o) for o in outs)
    got_params, got_x = pullback(cotangents)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(run(dict(ours.named_parameters()), xr), [xr, *ours.parameters()],
                               grad_outputs=cotangents)
    assert_bitwise_equal(got_x, want[0], "torch.func.vjp input")
    for (name, _), w in zip(ours.named_parameters(), want[1:]):
        assert_bitwise_equal(got_params[name], w, f"torch.func.vjp {name}")
    assert got_x.abs().sum() > 0

def test_vmap_gives_each_slice_its_own_bits():
    ours, _ = _pair(2, True, 0)
    xs = torch.randn(3, T, B, I)
    ours.float()
    batched = vmap(lambda x: ours(x)[0])(xs)
    for k in range(3):
        assert_bitwise_equal(batched[k], ours(xs[k])[0], f"vmap slice {k}")
    grads = vmap(grad(lambda x: ours(x)[0].square().sum()))(xs)
    for k in range(3):
        x = xs[k].clone().requires_grad_()
        ours(x)[0].square().sum().backward()
        assert_bitwise_equal(grads[k], x.grad, f"vmap(grad) slice {k}")


def test_vmap_over_the_weights_too():
    ours, _ = _pair(1, False, 0)
    params = {k: torch.stack([v.detach(), 2 * v.detach()]) for k, v in ours.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    out = vmap(lambda p: functional_call(ours, p, (x,))[0])(params)
    for k in range(2):
        single = {name: v[k] for name, v in params.items()}
        assert_bitwise_equal(out[k], functional_call(ours, single, (x,))[0], f"weights slice {k}")


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_jvp_and_forward_ad_match_nn_lstm(case):
    layers, bidirectional, proj, _, _ = case
    ours, ref = _pair(layers, bidirectional, proj)
    x = torch.randn(T, B, I, dtype=torch.float64)
    tangent = torch.randn_like(x)
    got = jvp(lambda v: ours(v)[0], (x,), (tangent,))[1]
    want = jvp(lambda v: ref(v)[0], (x,), (tangent,))[1]
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
    with fwAD.dual_level():
        out = ours(fwAD.make_dual(x, tangent))[0]
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want, rtol=1e-7, atol=1e-10)


def test_no_grad_calls_the_operator_alone_yet_keeps_every_transform(monkeypatch):
    """Under torch.no_grad the module calls the operator without LSTMFunction (a plain inference
    call skips its apply), except where a derivative can still be asked of the call: a forward-mode
    dual level, or a torch.func transform around it. Those must still get their tangents and
    slices, and the plain call the same bits as with gradients on."""
    ours, ref = _pair(2, True, 0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    tangent = torch.randn_like(x)
    want_tangent = jvp(lambda v: ref(v)[0], (x,), (tangent,))[1]
    with_grad = ours(x)[0]
    with torch.no_grad():
        got_tangent = jvp(lambda v: ours(v)[0], (x,), (tangent,))[1]
        with fwAD.dual_level():
            dual_tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, tangent))[0]).tangent
        sliced = vmap(lambda v: ours(v)[0])(torch.stack([x, 2 * x]))
    for got in (got_tangent, dual_tangent):
        torch.testing.assert_close(got, want_tangent, rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        assert_bitwise_equal(sliced[1], ours(2 * x)[0], "vmap slice under no_grad")

    def no_apply(*args):
        raise AssertionError("LSTMFunction.apply called where no derivative can be asked")
    monkeypatch.setattr(detlstm._autograd.LSTMFunction, "apply", no_apply)
    with torch.no_grad():
        plain = ours(x)[0]
    assert plain.grad_fn is None
    assert_bitwise_equal(plain, with_grad.detach(), "no_grad output")
    with pytest.raises(AssertionError, match="no derivative"):
        ours(x)  # gradients on: the autograd.Function is still the road


def test_hessian_matches_nn_lstm():
    ours, ref = _pair(1, True, 0)
    x = torch.randn(2, 1, I, dtype=torch.float64)
    got = hessian(lambda v: ours(v)[0].square().sum())(x)
    want = jacfwd(jacrev(lambda v: ref(v)[0].square().sum()))(x)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_batched_and_forward_ad(case):
    fn, inputs = _function_and_inputs(case)
    assert torch.autograd.gradcheck(fn, inputs, check_batched_grad=True, check_forward_ad=True,
                                    fast_mode=True)


def test_is_grads_batched_equals_one_call_per_row():
    ours, _ = _pair(2, True, 0)
    x = torch.randn(T, B, I, requires_grad=True)
    ours.float()
    out = ours(x)[0]
    cotangents = torch.randn(4, *out.shape)
    batched = torch.autograd.grad(out, [x] + list(ours.parameters()), cotangents,
                                  retain_graph=True, is_grads_batched=True)
    for k in range(4):
        single = torch.autograd.grad(out, [x] + list(ours.parameters()), cotangents[k],
                                     retain_graph=True)
        for b, s in zip(batched, single):
            assert_bitwise_equal(b[k], s, f"is_grads_batched row {k}")


def test_vectorized_jacobian_equals_the_loop():
    ours, _ = _pair(1, True, 0)
    x = torch.randn(2, 1, I, dtype=torch.float64)
    fn = lambda v: ours(v)[0]  # noqa: E731
    assert_bitwise_equal(torch.autograd.functional.jacobian(fn, x, vectorize=True),
                         torch.autograd.functional.jacobian(fn, x), "jacobian(vectorize=True)")
