"""PyTorch's LSTM tests from test/test_nn.py (TestNN and TestNNDeviceType) re-aimed at detlstm.LSTM,
with torch.nn.LSTM as the control: every test runs for both classes, on the CPU.

Upstream test -> here (LSTM mode only where upstream loops over RNN, GRU and LSTM):
  test_rnn_args_check, test_projections_lstm_args_check, test_cudnn_forward_exception (runs on the
  CPU upstream too), test_rnn_initial_hidden_state, test_projections_lstm_initial_hidden_state,
  test_rnn_weight_norm, test_RNN_cudnn_weight_norm and test_partial_flat_weights (on the CPU instead
  of moving to CUDA), test_RNN_dropout (its RNN arithmetic redone for LSTM gates),
  test_error_RNN_seq_len_zero, test_RNN_input_size_zero, test_RNN_dropout_state,
  test_RNN_change_dropout, test_RNN_cpu_vs_cudnn_{no,with}_dropout and test_rnn_fused (the class
  against nn.LSTM on the CPU, upstream's tolerances), test_cudnn_weight_format and
  test_cudnn_weight_tying (their CPU-meaningful part), test_rnn_retain_variables,
  test_lstmcell_backward_only_one_output_grad (for LSTM's three outputs),
  test_LSTM_grad_and_gradgrad, test_LSTM_differentiable_backward_using_oneDNN (the class against
  nn.LSTM without oneDNN), test_variable_sequence, test_save_lstm_compatibility, and the
  `isinstance(rnn, nn.LSTM)` that upstream's RNN helpers rely on.
Not here: test_rnn_check_device, test_projections_lstm_check_device (two GPUs),
test_pack_sequence_batch_sizes_throw (CUDA), the RNNCell/GRUCell/LSTMCell tests (other modules).
"""

import io
import re
import warnings
from copy import deepcopy
from itertools import product

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

from upstream_common import assert_equal, assert_not_equal, each_class, one_intra_op_thread, transfer_weights


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_intra_op_thread()


# test_nn's dtype2prec_DONTUSE for float32 / float64
PREC = 1e-5


def _saved_and_loaded(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# ---- argument checks ----------------------------------------------------------------------------

def _bad(shape, dim, size):
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


ARGS = dict(input_size=3, hidden_size=5, num_layers=2, batch=4, seq=6, bad=7)  # 7: no size divides it
INPUT_SHAPE = (ARGS["seq"], ARGS["batch"], ARGS["input_size"])
HIDDEN_SHAPE = (ARGS["num_layers"], ARGS["batch"], ARGS["hidden_size"])
ARGS_CASES = {
    "input batch size": (_bad(INPUT_SHAPE, 1, 7), HIDDEN_SHAPE),
    "hidden batch size": (INPUT_SHAPE, _bad(HIDDEN_SHAPE, 1, 7)),
    "input size": (_bad(INPUT_SHAPE, 2, 7), HIDDEN_SHAPE),
    "hidden size": (INPUT_SHAPE, _bad(HIDDEN_SHAPE, 2, 7)),
    "hidden[0]": (INPUT_SHAPE, _bad(HIDDEN_SHAPE, 0, 7)),
}


@each_class
@pytest.mark.parametrize("case", list(ARGS_CASES))
def test_rnn_args_check(cls, case):
    input_shape, hidden_shape = ARGS_CASES[case]
    x, hidden = torch.randn(input_shape), torch.randn(hidden_shape)
    if hidden_shape == HIDDEN_SHAPE:
        calls = [(x, (hidden, hidden))]
    else:
        good = torch.randn(HIDDEN_SHAPE)
        calls = [(x, (hidden, good)), (x, (good, hidden))]
    for x, hx in calls:
        model = cls(ARGS["input_size"], ARGS["hidden_size"], ARGS["num_layers"])
        with pytest.raises(RuntimeError):
            model(x, hx)


PROJ_H = (2, 4, 2)  # (layers, batch, proj_size)
PROJ_C = (2, 4, 5)
PROJ_CASES = {
    "input batch size": (_bad(INPUT_SHAPE, 1, 7), PROJ_H, PROJ_C),
    "hidden batch size": (INPUT_SHAPE, _bad(PROJ_H, 1, 7), _bad(PROJ_C, 1, 7)),
    "input size": (_bad(INPUT_SHAPE, 2, 7), PROJ_H, PROJ_C),
    "hidden size": (INPUT_SHAPE, _bad(PROJ_H, 2, 7), _bad(PROJ_C, 2, 7)),
    "hidden[0]": (INPUT_SHAPE, _bad(PROJ_H, 0, 7), _bad(PROJ_C, 0, 7)),
    "proj size = hidden size": (INPUT_SHAPE, _bad(PROJ_H, 0, 5), PROJ_C),
    "proj size != hidden size": (INPUT_SHAPE, _bad(PROJ_H, 0, 7), PROJ_C),
    "cell size != hidden size": (INPUT_SHAPE, PROJ_H, _bad(PROJ_C, 0, 7)),
}


@each_class
@pytest.mark.parametrize("case", list(PROJ_CASES))
def test_projections_lstm_args_check(cls, case):
    input_shape, h_shape, c_shape = PROJ_CASES[case]
    model = cls(3, 5, 2, proj_size=2)
    with pytest.raises(RuntimeError):
        model(torch.randn(input_shape), (torch.randn(h_shape), torch.randn(c_shape)))


@each_class
@pytest.mark.parametrize("proj_size", [0, 10])
def test_cudnn_forward_exception(cls, proj_size):
    rnn = cls(10, 20, batch_first=True, proj_size=proj_size)
    hidden = (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))
    with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
        rnn(torch.randn(2, 3, 10), hidden)
    with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to input_size")):
        rnn(torch.randn(2, 3, 3))


# ---- initial hidden state -----------------------------------------------------------------------

@each_class
def test_rnn_initial_hidden_state(cls):
    rnn = cls(30, 20, 2)
    x = torch.randn(10, 32, 30)
    hidden = torch.zeros(2, 32, 20)
    output1, hidden1 = rnn(x, (hidden, hidden))
    output2, hidden2 = rnn(x)
    assert_equal(output1, output2)
    assert_equal(hidden1, hidden2)


@each_class
@pytest.mark.parametrize("bidirectional", [False, True])
def test_projections_lstm_initial_hidden_state(cls, bidirectional):
    rnn = cls(30, 20, 2, bidirectional=bidirectional, proj_size=10)
    dirs = 2 if bidirectional else 1
    x = torch.randn(10, 32, 30)
    hidden = (torch.zeros(2 * dirs, 32, 10), torch.zeros(2 * dirs, 32, 20))
    output1, hidden1 = rnn(x, hidden)
    output2, hidden2 = rnn(x)
    assert_equal(output1, output2)
    assert_equal(hidden1, hidden2)


# ---- weight norm, partial flat weights, weight storage, tying -----------------------------------

def _weight_norm(module, name):
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated, still supported
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module, name=name)


def _check_weight_norm_params(m, name, num_params):
    m = _weight_norm(m, name)
    assert sum(isinstance(p, nn.Parameter) for p in m._flat_weights) == num_params - 1
    m = torch.nn.utils.remove_weight_norm(m, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in m._flat_weights) == num_params
    named = dict(m.named_parameters())
    assert m._parameters.get(name) is not None and named.get(name) is not None
    for suffix in ("_v", "_g"):
        assert name + suffix not in m._parameters and name + suffix not in named


@each_class
def test_rnn_weight_norm(cls):
    _check_weight_norm_params(cls(32, 32), "weight_ih_l0", 4)
    _check_weight_norm_params(cls(32, 32, proj_size=16), "weight_hr_l0", 5)


@each_class
@pytest.mark.parametrize("name,proj_size", [("weight_hh_l0", 0), ("weight_hr_l0", 3)])
def test_RNN_cudnn_weight_norm(cls, name, proj_size):
    """Upstream moves the weight-normed module to CUDA; here it stays on the CPU."""
    m = cls(10, 6, 2, proj_size=proj_size)
    x = torch.randn(7, 6, 10)
    expected = m(x)
    m = _weight_norm(m, name)
    assert_equal(m(x), expected)
    m = torch.nn.utils.remove_weight_norm(m, name=name)
    assert_equal(m(x), expected)


@each_class
def test_partial_flat_weights(cls):
    """A module converted (upstream: .cuda(); here .cpu() and .float()) while one weight attribute is
    deleted does not fail, and works again once the weight is put back."""
    m = cls(10, 6, 2)
    x = torch.randn(3, 2, 10)
    expected = m(x)
    weight_orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.cpu()
    m.float()
    m.weight_hh_l0 = weight_orig
    assert_equal(m(x)[0], expected[0])


@each_class
@pytest.mark.parametrize("proj_size", [0, 10])
def test_cudnn_weight_format(cls, proj_size):
    """A weight whose storage is replaced (weight.set_) is read where it now lives: same outputs and
    gradients, and the new storage stays shared with the parameter (upstream's cuDNN warning about
    non-contiguous weight chunks has no CPU counterpart)."""
    rnn = cls(10, 20, batch_first=True, proj_size=proj_size)
    x = torch.randn(5, 4, 10, requires_grad=True)
    hx = torch.randn(1, 5, proj_size or 20, requires_grad=True)
    cx = torch.randn(1, 5, 20, requires_grad=True)
    all_vars = [x, hx, cx] + list(rnn.parameters())
    output = rnn(x, (hx, cx))
    output[0].sum().backward()
    grads = [v.grad.clone() for v in all_vars]
    for v in all_vars:
        v.grad.zero_()
    weight = all_vars[4]
    weight_data = weight.data.clone()
    with torch.no_grad():
        weight.set_(weight_data)
    for _ in range(2):
        output_noncontig = rnn(x, (hx, cx))
        output_noncontig[0].sum().backward()
        grads_noncontig = [v.grad.clone() for v in all_vars]
        for v in all_vars:
            v.grad.zero_()
        assert_equal(output, output_noncontig)
        assert_equal(grads_noncontig, grads)
    weight_data[:] = 4
    assert_equal(weight_data, all_vars[4].data)


def _tied_step(rnn, x, hx):
    rnn.bias_ih_l0_reverse = rnn.bias_ih_l0
    opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
    opt.zero_grad()
    rnn(x, hx)[0].sum().backward()
    opt.step()
    return rnn(x, hx)


@each_class
@pytest.mark.parametrize("proj_size", [0, 10])
def test_cudnn_weight_tying(cls, proj_size):
    """bias_ih_l0_reverse tied to bias_ih_l0, one SGD step: the class follows nn.LSTM (upstream
    compares the CUDA module with itself moved to the CPU) and the tie survives."""
    torch.manual_seed(0)
    ref = nn.LSTM(10, 20, batch_first=True, bidirectional=True, proj_size=proj_size)
    rnn = cls(10, 20, batch_first=True, bidirectional=True, proj_size=proj_size)
    transfer_weights(ref, rnn)
    x = torch.randn(5, 4, 10, requires_grad=True)
    hx = (torch.randn(2, 5, proj_size or 20, requires_grad=True), torch.randn(2, 5, 20, requires_grad=True))
    expected = _tied_step(ref, x, hx)
    assert_equal(_tied_step(rnn, x, hx), expected)
    assert rnn.bias_ih_l0_reverse is rnn.bias_ih_l0
    assert len(list(rnn.parameters())) == len(list(ref.parameters()))


@each_class
def test_is_an_nn_lstm(cls):
    """Upstream's RNN test helpers (and torch code such as torch.nn.utils.rnn users) branch on
    isinstance(rnn, nn.LSTM): a drop-in must pass it."""
    m = cls(3, 4)
    assert isinstance(m, nn.LSTM)
    assert isinstance(m, nn.RNNBase)


# ---- dropout ------------------------------------------------------------------------------------

def _lstm_unit(s):
    """h of one LSTM step from zero state when all four gate pre-activations equal s."""
    gate = torch.sigmoid(s)
    return gate * torch.tanh(gate * torch.tanh(s))


def _invert_lstm_unit(y):
    lo, hi = torch.tensor(0.0, dtype=torch.float64), torch.tensor(20.0, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _lstm_unit(mid) < y else (lo, mid)
    return (lo + hi) / 2


def _dropout_probe(cls, p, train):
    """Upstream's RNN(10, 1000, 2, bias=False) with unit weights, as an LSTM: every unit of layer 0
    gets pre-activation 10, every gate of layer 1 the kept layer-0 outputs summed times 1e-3 (so it
    stays unsaturated and the number of kept units can be read back)."""
    rnn = cls(10, 1000, 2, bias=False, dropout=p, dtype=torch.float64)
    rnn.train(train)
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(1)
        rnn.weight_hh_l0.fill_(1)
        rnn.weight_ih_l1.fill_(1e-3)
        rnn.weight_hh_l1.fill_(1)
    x = torch.ones(1, 1, 10, dtype=torch.float64)
    hx = (torch.zeros(2, 1, 1000, dtype=torch.float64), torch.zeros(2, 1, 1000, dtype=torch.float64))
    return rnn(x, hx)


@each_class
@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_dropout(cls, p, train):
    """Dropout sits between the layers only, scales kept values by 1/(1-p), and p=1 drops all."""
    output, (h_n, _) = _dropout_probe(cls, p, train)
    h0 = _lstm_unit(torch.tensor(10.0, dtype=torch.float64))  # layer 0's output, every unit
    assert_equal(output.min(), output.max())
    output_val = output[0, 0, 0]
    if p == 0 or not train:
        assert_equal(output_val, _lstm_unit(h0))  # upstream: 10000
    elif p == 1:
        assert_equal(output_val, torch.zeros((), dtype=torch.float64))
    else:
        kept = _invert_lstm_unit(output_val) * 1000 * (1 - p) / h0  # units of layer 0 kept
        assert 0.8 * 1000 * (1 - p) < kept < 1.2 * 1000 * (1 - p), kept
        assert abs(kept - torch.round(kept)) < 1e-2, kept  # upstream's denorm_mod check
    assert_equal(h_n[0].min(), h_n[0].max())
    assert_equal(h_n[1].min(), h_n[1].max())
    assert_equal(h_n[0, 0, 0], h0)  # upstream: hy[0] == 10
    assert_equal(h_n[1, 0, 0], output_val)


@each_class
@pytest.mark.parametrize("p", [0, 0.1234])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_dropout_state(cls, p, train):
    rnn = cls(100, 100, 2, bias=False, dropout=p)
    rnn.train(train)
    x = torch.rand(1, 1, 100)
    hx = (torch.rand(2, 1, 100), torch.rand(2, 1, 100))
    output1, hy1 = rnn(x, hx)
    output2, hy2 = rnn(x, hx)
    rnn2 = _saved_and_loaded(rnn)
    rnn2.flatten_parameters()
    output3, hy3 = rnn2(x, hx)
    same = assert_equal if p == 0 or not train else assert_not_equal
    same(output1, output2)
    same(output1, output3)
    same(hy1, hy2)
    same(hy1, hy3)


@each_class
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_change_dropout(cls, train):
    rnn = cls(100, 100, 2, dropout=0, dtype=torch.float64)
    x = torch.rand(3, 2, 100, dtype=torch.float64)
    rnn.train(train)
    prev_output = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        output1, hy1 = rnn(x)
        output2, hy2 = rnn(x)
        same = assert_equal if p in (0, 1) or not train else assert_not_equal
        same(output1, output2, where=f"p={p}: output")
        same(hy1, hy2, where=f"p={p}: hy")
        if prev_output is not None:
            previous = assert_not_equal if train else assert_equal
            previous(output1, prev_output, where=f"p={p}: output1 vs previous p")
            previous(output2, prev_output, where=f"p={p}: output2 vs previous p")
        prev_output = output1.detach()


# ---- empty inputs -------------------------------------------------------------------------------

@each_class
@pytest.mark.parametrize("bidirectional", [True, False])
def test_error_RNN_seq_len_zero(cls, bidirectional):
    rnn = cls(5, 6, bidirectional=bidirectional, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        rnn(torch.ones(0, 10, 5, dtype=torch.float64))


@each_class
def test_RNN_input_size_zero(cls):
    rnn = cls(input_size=3, hidden_size=4)
    outs = rnn(torch.zeros((5, 0, 3)))
    assert outs[0].shape == torch.Size([5, 0, 4])
    outs[0].sum().backward()  # no hard error


# ---- against nn.LSTM (upstream: CPU against cuDNN / CUDA) ---------------------------------------

def _make_noncontig(tensor):
    ndim = tensor.dim()
    return torch.stack([tensor.clone().zero_(), tensor], ndim).select(ndim, 1)


def _forward_backward(rnn, input_val, grad_output, weights_val, hx_val, grad_hy, cx_val=None, grad_cy=None):
    """upstream's forward_backward for an LSTM: weights copied in, hx = (h, c + 1), backward with
    (grad_output, grad_hy, grad_cy + 1); returns the results and gradients."""
    with torch.no_grad():
        for x_layer, y_layer in zip(rnn.all_weights, weights_val):
            for x, y in zip(x_layer, y_layer):
                x.copy_(y)
    if isinstance(input_val, rnn_utils.PackedSequence):
        input_var = input_val.data.detach().clone().requires_grad_(True)
        x = rnn_utils.PackedSequence(input_var, input_val.batch_sizes)
    else:
        x = input_var = input_val.detach().clone().requires_grad_(True)
    cx_val = hx_val if cx_val is None else cx_val
    hx = (hx_val.clone().requires_grad_(True), cx_val.add(1).requires_grad_(True))
    output, hy = rnn(x, hx)
    output = output.data if isinstance(output, rnn_utils.PackedSequence) else output
    grad_cy = grad_hy if grad_cy is None else grad_cy
    torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, grad_cy + 1])
    return {"output": output, "hy": hy[0], "weights": rnn.all_weights, "grad_input": input_var.grad,
            "grad_hx": hx[0].grad, "cy": hy[1], "grad_cx": hx[1].grad}


def _compare_to_reference(ours, reference):
    assert list(ours) == list(reference)
    for key in ours:
        if key != "weights":
            assert_equal(ours[key], reference[key], atol=5e-5, rtol=0, where=key)
    for our_layer, ref_layer in zip(ours["weights"], reference["weights"]):
        for w, ref_w in zip(our_layer, ref_layer):
            assert_equal(w.grad, ref_w.grad, atol=5e-5, rtol=0, where="weight grad")


def _cpu_vs_cudnn_case(cls, dropout, flags, proj_size, dtype=torch.float64):
    bias, bidirectional, batch_first, contig, variable_len, lens_as_tensor = flags
    input_size, hidden_size, num_layers, seq_length, batch = 10, 6, 2, 7, 6
    dirs, real = (2 if bidirectional else 1), proj_size or hidden_size
    bt = (batch, seq_length) if batch_first else (seq_length, batch)
    input_val = torch.randn(*bt, input_size, dtype=dtype)
    grad_output = torch.randn(*bt, real * dirs, dtype=dtype)
    hx_val = torch.randn(num_layers * dirs, batch, real, dtype=dtype)
    grad_hy = torch.randn(num_layers * dirs, batch, real, dtype=dtype)
    cx_val = grad_cy = None
    if proj_size:
        cx_val = torch.randn(num_layers * dirs, batch, hidden_size, dtype=dtype)
        grad_cy = torch.randn(num_layers * dirs, batch, hidden_size, dtype=dtype)
    if not contig:
        input_val, grad_output, hx_val, grad_hy = map(_make_noncontig, (input_val, grad_output, hx_val, grad_hy))
        cx_val, grad_cy = (None, None) if not proj_size else map(_make_noncontig, (cx_val, grad_cy))
    if variable_len:
        lengths = [7, 5, 5, 2, 1, 1]
        lengths = torch.tensor(lengths, dtype=torch.long) if lens_as_tensor else lengths
        input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
        grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data
    kwargs = dict(bias=bias, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first,
                  proj_size=proj_size)
    reference = nn.LSTM(input_size, hidden_size, num_layers, **kwargs).to(dtype)
    ours = cls(input_size, hidden_size, num_layers, **kwargs).to(dtype)
    args = (input_val, grad_output, reference.all_weights, hx_val, grad_hy, cx_val, grad_cy)
    _compare_to_reference(_forward_backward(ours, *args), _forward_backward(reference, *args))


@each_class
@pytest.mark.parametrize("dropout", [0, 1], ids=["no_dropout", "with_dropout"])
@pytest.mark.parametrize("proj_size", [0, 3])
def test_RNN_cpu_vs_cudnn(cls, dropout, proj_size):
    """Upstream compares CPU with cuDNN (float64, atol 5e-5) over bias x bidirectional x batch_first
    x contiguous x variable length x lengths as a tensor, with dropout 0 and 1 (the only values
    whose outcome does not depend on the random masks); here the class against nn.LSTM."""
    torch.manual_seed(0)
    for flags in product((True, False), repeat=6):
        _cpu_vs_cudnn_case(cls, dropout, flags, proj_size)


@each_class
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_fused(cls, dtype, bias):
    """Upstream: the native CPU LSTM against the native CUDA one; here the class against nn.LSTM."""
    torch.manual_seed(0)
    input_val = torch.randn(7, 6, 10, dtype=dtype)
    grad_output = torch.randn(7, 6, 6, dtype=dtype)
    hx_val = torch.randn(2, 6, 6, dtype=dtype)
    grad_hy = torch.randn(2, 6, 6, dtype=dtype)
    reference = nn.LSTM(10, 6, 2, bias=bias).to(dtype)
    ours = cls(10, 6, 2, bias=bias).to(dtype)
    results = [_forward_backward(m, input_val, grad_output, reference.all_weights, hx_val, grad_hy)
               for m in (reference, ours)]
    expected, got = results
    for key in ("output", "hy", "cy", "grad_input", "grad_hx", "grad_cx"):
        assert_equal(got[key], expected[key], where=key)
    for layer, ref_layer in zip(got["weights"], expected["weights"]):
        for w, ref_w in zip(layer, ref_layer):
            assert_equal(w.grad, ref_w.grad, atol=5e-5, rtol=0, where="weight grad")


# ---- autograd -----------------------------------------------------------------------------------

@each_class
def test_rnn_retain_variables(cls):
    rnn = cls(10, 20, num_layers=2).to(torch.float64)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    output = rnn(x)
    output[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        output[0].sum().backward(retain_graph=True)
        assert_equal([x.grad] + [p.grad for p in rnn.parameters()], grads)


@each_class
@pytest.mark.parametrize("which", ["output", "h_n", "c_n"])
def test_lstmcell_backward_only_one_output_grad(cls, which):
    """Upstream (LSTMCell, CUDA): a backward through one output alone (the others' gradients left
    undefined) reaches the input."""
    m = cls(2, 3).to(torch.float64)
    s = torch.randn(1, 1, 2, dtype=torch.float64, requires_grad=True)
    output, (h_n, c_n) = m(s)
    {"output": output, "h_n": h_n, "c_n": c_n}[which].sum().backward()
    assert s.grad is not None and s.grad.abs().sum().item() != 0


def _flatten_out(mod):
    def call(x):
        output, (h, c) = mod(x)
        return output, h, c
    return call


@each_class
@pytest.mark.parametrize("bias", [True, False])
def test_LSTM_grad_and_gradgrad(cls, bias):
    x = torch.rand(1, 3, 4, dtype=torch.float64, requires_grad=True)
    fn = _flatten_out(cls(4, 4, bias=bias).to(torch.float64))
    # common_utils' gradcheck / gradgradcheck: fast_mode on; upstream turns batched grads off here
    assert torch.autograd.gradcheck(fn, (x,), check_batched_grad=False, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), check_batched_grad=False, fast_mode=True)


def _input_derivative_and_its_gradient(net, x):
    x = x.clone().requires_grad_(True)
    out, _ = net(x)
    der_out = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), retain_graph=True,
                                  create_graph=True)[0]
    der_out.sum().backward(retain_graph=True)
    return der_out, x.grad


@each_class
def test_LSTM_differentiable_backward_using_oneDNN(cls):
    """d(out)/dx with create_graph, then its own backward (double backward) of a 20-layer LSTM:
    upstream compares nn.LSTM without and with oneDNN; here nn.LSTM without oneDNN against the
    class (for nn.LSTM itself: with oneDNN, exactly upstream's check)."""
    torch.manual_seed(0)
    net = cls(3, 3, 20, batch_first=True)
    reference = nn.LSTM(3, 3, 20, batch_first=True)
    transfer_weights(net, reference)
    x = torch.rand(10, 12, 3)
    enabled = torch._C._get_mkldnn_enabled()
    try:
        torch._C._set_mkldnn_enabled(False)
        der_out1, grad1 = _input_derivative_and_its_gradient(reference, x)
        torch._C._set_mkldnn_enabled(True)
        der_out2, grad2 = _input_derivative_and_its_gradient(net, x)
    finally:
        torch._C._set_mkldnn_enabled(enabled)
    assert torch.allclose(der_out1, der_out2), (der_out1 - der_out2).abs().max()
    assert torch.allclose(grad1, grad2), (grad1 - grad2).abs().max()
    # Through 20 layers both derivatives are ~1e-15, far below allclose's atol of 1e-8 (zeros would
    # pass): the same comparison relative to their size, within 0.1% of the largest element.
    for got, expected in ((der_out2, der_out1), (grad2, grad1)):
        scale = expected.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * scale)


# ---- variable sequences, old pickles ------------------------------------------------------------

def _pad(var, length):
    if var.size(0) == length:
        return var
    return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])


def _one_by_one(lstm, x, lengths, hidden0):
    """Each sequence alone through lstm, padded back into one batch."""
    seq_outs, seq_hiddens = [], []
    for i, length in enumerate(lengths):
        hidden_i = None if hidden0 is None else tuple(h[:, i:i + 1, :].contiguous() for h in hidden0)
        out, hid = lstm(x[:length, i:i + 1], hidden_i)
        seq_outs.append(_pad(out, max(lengths)))
        seq_hiddens.append(hid)
    return torch.cat(seq_outs, 1), tuple(torch.cat(hids, 1) for hids in zip(*seq_hiddens))


def _check_lengths(cls, lengths, enforce_sorted, use_default_hiddens, proj_size):
    x_leaf = torch.randn(max(lengths), len(lengths), 3, requires_grad=True)
    lstm = cls(3, 4, bidirectional=True, num_layers=2, proj_size=proj_size)
    lstm2 = deepcopy(lstm)
    hidden0 = None
    if not use_default_hiddens:
        hidden0 = (torch.randn(4, len(lengths), proj_size or 4), torch.randn(4, len(lengths), 4))
    seq_out, seq_hidden = _one_by_one(lstm2, x_leaf, lengths, hidden0)
    packed = rnn_utils.pack_padded_sequence(x_leaf, lengths, enforce_sorted=enforce_sorted)
    packed_out, packed_hidden = lstm(packed, hidden0)
    unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
    assert_equal(packed_hidden, seq_hidden, atol=PREC, rtol=0, where="hidden")
    assert_equal(unpacked, seq_out, atol=PREC, rtol=0, where="output")
    assert_equal(unpacked_len, lengths, atol=PREC, rtol=0, where="lengths")
    seq_out.sum().backward()
    grad_x = x_leaf.grad.clone()
    x_leaf.grad.zero_()
    unpacked.sum().backward()
    assert_equal(x_leaf.grad, grad_x, atol=PREC, rtol=0, where="grad x")
    for p1, p2 in zip(lstm.parameters(), lstm2.parameters()):
        assert_equal(p1.grad, p2.grad, atol=2e-4, rtol=0, where="parameter grad")


@each_class
@pytest.mark.parametrize("enforce_sorted,lengths", [
    (True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]), (False, [10, 10, 6, 2, 2, 1, 1]),
    (False, [2, 1, 3, 2, 10, 5, 3])])
def test_variable_sequence(cls, enforce_sorted, lengths):
    torch.manual_seed(0)
    for use_default_hiddens, proj_size in product((True, False), (0, 2)):
        _check_lengths(cls, lengths, enforce_sorted, use_default_hiddens, proj_size)


@each_class
def test_save_lstm_compatibility(cls):
    """A state saved before proj_size existed (PyTorch <= 1.7) still loads and runs."""
    model = cls(2, 3)
    x = torch.randn(32, 5, 2)
    expected = model(x)
    assert model.proj_size == 0
    state_dict = model.__dict__
    del state_dict["proj_size"]
    loaded_model = cls(2, 3)
    loaded_model.__setstate__(state_dict)
    assert_equal(loaded_model(x), expected)
