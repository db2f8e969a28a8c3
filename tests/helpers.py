"""Shared test helpers, one set for every test file: matched nn.LSTM / detlstm.LSTM pairs, the shared
shapes, inputs and a runner for every input form, the operator's argument tuples, and bit-for-bit
comparisons."""

import hashlib
from typing import NamedTuple

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import detlstm


class Shape(NamedTuple):
    """One call's sizes: steps T, batch B, input features I, hidden H, and B lengths in [1, T]."""
    steps: int
    batch: int
    inputs: int
    hidden: int
    lengths: tuple


# The agreement grid's shape (tests/test_agreement.py, tests/test_cuda.py, tests/test_cuda_emulation.py).
SMALL = Shape(6, 4, 5, 7, (6, 2, 5, 3))
# The operator-level checks' shape (opcheck): small enough to run every check quickly.
TINY = Shape(5, 3, 3, 4, (5, 2, 4))
# Every input form detlstm.LSTM takes; run_form runs each.
FORMS = ("padded", "unbatched", "packed_sorted", "packed_unsorted", "lengths")


def make_pair(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
              bidirectional=False, dtype=torch.float32, seed=0, proj_size=0):
    """(torch.nn.LSTM, detlstm.LSTM) with the same configuration and weights (nn.LSTM's init at seed)."""
    torch.manual_seed(seed)
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
                  bidirectional=bidirectional, dtype=dtype, proj_size=proj_size)
    ref = torch.nn.LSTM(input_size, hidden_size, **kwargs)
    ours = detlstm.LSTM(input_size, hidden_size, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: compare the raw words
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def assert_bitwise_equal(a, b, what=""):
    if isinstance(a, PackedSequence):
        a, b = a.data, b.data
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} vs {b.dtype}"
    if tensor_bytes(a) != tensor_bytes(b):
        diff = (a.double() - b.double()).abs()
        raise AssertionError(f"{what}: not bitwise equal (max abs diff {diff.max().item():.3e}, "
                             f"{(a != b).sum().item()} elements differ)")


def assert_results_equal(a, b, what=""):
    """Two lists of results (as forward_backward returns them), bit for bit, each named by its index."""
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} results"
    for k, (x, y) in enumerate(zip(a, b)):
        assert_bitwise_equal(x, y, f"{what}, result {k}")


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_bytes(t))
    return h.hexdigest()


def make_inputs(shape=SMALL, form="padded", batch_first=False, layers=1, bidirectional=False,
                proj_size=0, dtype=torch.float32, seed=0):
    """(x, (h0, c0)) for one call of `form`, drawn in that order from a CPU generator seeded `seed`:
    x is (T, I) unbatched, (B, T, I) batch_first, else (T, B, I); h0 and c0 are
    (layers * directions, [B,] proj_size or H) and (layers * directions, [B,] H)."""
    g = torch.Generator().manual_seed(seed)
    t, b, i = shape.steps, shape.batch, shape.inputs
    batch = () if form == "unbatched" else (b,)
    x_shape = (t, i) if form == "unbatched" else ((b, t, i) if batch_first else (t, b, i))
    x = torch.randn(x_shape, generator=g, dtype=dtype)
    d = layers * (2 if bidirectional else 1)
    h0 = torch.randn(d, *batch, proj_size or shape.hidden, generator=g, dtype=dtype)
    c0 = torch.randn(d, *batch, shape.hidden, generator=g, dtype=dtype)
    return x, (h0, c0)


def run_form(model, form, x, hx=None, lengths=None, batch_first=False, reference=False, **kwargs):
    """One call of model (nn.LSTM or detlstm.LSTM) on x (padded, or (T, I) for "unbatched") in
    `form`; kwargs go to the call. Returns (output, h_n, c_n), the output as a padded tensor or the
    packed data. "lengths" with reference=True runs nn.LSTM on the packed equivalent, padded back."""
    if form in ("padded", "unbatched"):
        out, (h, c) = model(x, hx, **kwargs)
        return out, h, c
    if form == "packed_sorted":
        order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
        xs = x[order] if batch_first else x[:, order]
        packed = pack_padded_sequence(xs, [lengths[b] for b in order], batch_first=batch_first)
        out, (h, c) = model(packed, hx, **kwargs)
        return out.data, h, c
    if form == "packed_unsorted" or (form == "lengths" and reference):
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, (h, c) = model(packed, hx, **kwargs)
        if form == "lengths":
            total = x.shape[1 if batch_first else 0]
            return pad_packed_sequence(out, batch_first=batch_first, total_length=total)[0], h, c
        return out.data, h, c
    assert form == "lengths", form
    out, (h, c) = model(x, hx, lengths=torch.as_tensor(lengths), **kwargs)
    return out, h, c


def linear_loss(tensors, seed):
    """A fixed random linear function of the tensors: each times weights of its shape and dtype drawn
    on the CPU from a generator seeded `seed` (so every device gets the same weights), summed."""
    g = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)).sum() for t in tensors)


def forward_backward(model, form, x, hx=None, lengths=None, batch_first=False, reference=False,
                     device=None, loss_seed=9, **kwargs):
    """run_form, then the gradients of linear_loss(output, h_n, c_n) w.r.t. fresh leaf copies of x and
    hx (on `device` when given; model must already be there) and every parameter of model. Returns
    the results, detached and on the CPU: [output, h_n, c_n, grad x, (grad h0, grad c0,) *grad params]."""
    x = x.detach().clone().to(device).requires_grad_()
    leaves = [x]
    if hx is not None:
        hx = tuple(t.detach().clone().to(device).requires_grad_() for t in hx)
        leaves += list(hx)
    out, h, c = run_form(model, form, x, hx, lengths, batch_first, reference, **kwargs)
    grads = torch.autograd.grad(linear_loss((out, h, c), loss_seed), leaves + list(model.parameters()))
    return [t.detach().cpu() for t in (out, h, c, *grads)]


def random_weights(layers, bidirectional, bias, proj_size, inputs, hidden, generator, scale=0.3):
    """The flat weight list of an LSTM (nn.LSTM's order and shapes), normal * scale, float32."""
    directions = 2 if bidirectional else 1
    real = proj_size or hidden
    weights = []
    for layer in range(layers):
        k = inputs if layer == 0 else directions * real
        for _ in range(directions):
            weights += [torch.randn(4 * hidden, k, generator=generator),
                        torch.randn(4 * hidden, real, generator=generator)]
            if bias:
                weights += [torch.randn(4 * hidden, generator=generator),
                            torch.randn(4 * hidden, generator=generator)]
            if proj_size:
                weights.append(torch.randn(real, hidden, generator=generator))
    return [w * scale for w in weights]


def forward_args(layers=1, bidirectional=False, bias=True, proj_size=0, dtype=torch.float32, shape=SMALL,
                 dropout=0.0, train=False, dropout_seed=1234, seed=0, device=None, requires_grad=False):
    """The arguments of torch.ops.detlstm.lstm_forward for one call, and seeds for its three backward
    inputs: ((x, lengths, h0, c0, weights, bias, layers, bidirectional, dropout, train, seed,
    proj_size),
    (grad output, grad h_n, grad c_n)). Drawn from a CPU generator seeded `seed` in the order weights,
    x, h0, c0, grads; x, h0, c0, weights and grads then go to `device` (lengths and the seed stay on
    the CPU, as LSTM passes them) and, with requires_grad, the forward's tensors become leaves."""
    g = torch.Generator().manual_seed(seed)
    directions = 2 if bidirectional else 1
    t, b, h, real = shape.steps, shape.batch, shape.hidden, proj_size or shape.hidden
    weights = random_weights(layers, bidirectional, bias, proj_size, shape.inputs, h, g)
    states = [(layers * directions, b, real), (layers * directions, b, h)]
    x, h0, c0 = [torch.randn(s, generator=g, dtype=dtype) for s in [(t, b, shape.inputs)] + states]
    grad_sizes = [(t, b, directions * real)] + states
    grads = tuple(torch.randn(s, generator=g, dtype=dtype).to(device) for s in grad_sizes)
    x, h0, c0, *weights = [w.to(device, dtype).requires_grad_(requires_grad) for w in [x, h0, c0, *weights]]
    args = (x, torch.tensor(shape.lengths), h0, c0, weights, bias, layers, bidirectional, dropout, train,
            torch.tensor(dropout_seed, dtype=torch.int64), proj_size)
    return args, grads


def backward_args(fwd_args, fwd_out, grads):
    """The arguments of torch.ops.detlstm.lstm_backward after lstm_forward(*fwd_args) gave fwd_out."""
    x, lengths, h0, c0, weights, bias, layers, bidir, dropout, train, seed, proj_size = fwd_args
    output, _, _, layer_out, gates, cells = fwd_out
    return (*grads, x, lengths, h0, c0, weights, output, layer_out, gates, cells, bias, layers, bidir,
            dropout, train, seed, proj_size)
