"""detlstm.LSTM against torch.nn.LSTM on the CPU: outputs, final states and every gradient, over
layers, directions, bias, batch_first, given/absent hx and every input form."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import make_pair

T, B, I, H = 6, 4, 5, 7
LENGTHS = [6, 2, 5, 3]
FORMS = ["padded", "unbatched", "packed_sorted", "packed_unsorted", "lengths"]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _run(model, form, x, hx, lengths, batch_first, is_ref):
    """Runs one input form; returns (tensor to compare as output, h_n, c_n)."""
    if form in ("padded", "unbatched"):
        out, (h, c) = model(x, hx)
        return out, h, c
    if form == "packed_sorted":
        order = sorted(range(B), key=lambda b: -lengths[b])
        xs = x[:, order] if not batch_first else x[order]
        packed = pack_padded_sequence(xs, [lengths[b] for b in order], batch_first=batch_first)
        out, (h, c) = model(packed, hx)
        return out.data, h, c
    if form == "packed_unsorted":
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, (h, c) = model(packed, hx)
        return out.data, h, c
    # lengths=: ours takes the padded tensor; the reference is nn.LSTM on the packed equivalent
    if is_ref:
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out, (h, c) = model(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
        return out, h, c
    out, (h, c) = model(x, hx, lengths=torch.tensor(lengths))
    return out, h, c


CASES = list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True],
                               [False, True], FORMS))


@pytest.mark.parametrize("layers,bidir,bias,batch_first,with_hx,form", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_nn_lstm(layers, bidir, bias, batch_first, with_hx, form, dtype):
    ref, ours = make_pair(I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidir, dtype=dtype, seed=layers * 7 + bidir)
    g = torch.Generator().manual_seed(5)
    shape = (T, I) if form == "unbatched" else ((B, T, I) if batch_first else (T, B, I))
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    sl = (layers * (2 if bidir else 1), H) if form == "unbatched" else (layers * (2 if bidir else 1), B, H)
    h00, c00 = torch.randn(sl, generator=g, dtype=dtype), torch.randn(sl, generator=g, dtype=dtype)

    results = []
    for model, is_ref in ((ref, True), (ours, False)):
        x = x0.clone().requires_grad_()
        leaves = [x]
        hx = None
        if with_hx:
            h0, c0 = h00.clone().requires_grad_(), c00.clone().requires_grad_()
            hx = (h0, c0)
            leaves += [h0, c0]
        out, h, c = _run(model, form, x, hx, LENGTHS, batch_first, is_ref)
        gl = torch.Generator().manual_seed(9)
        loss = sum((t * torch.randn(t.shape, generator=gl, dtype=dtype)).sum() for t in (out, h, c))
        grads = torch.autograd.grad(loss, leaves + list(model.parameters()))
        results.append((out, h, c, grads))

    (o1, h1, c1, g1), (o2, h2, c2, g2) = results
    tol = TOL[dtype]
    torch.testing.assert_close(o2, o1, **tol)
    torch.testing.assert_close(h2, h1, **tol)
    torch.testing.assert_close(c2, c1, **tol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, **tol)


def test_lengths_padding_rows_are_zero():
    _, ours = make_pair(I, H, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    out, _ = ours(x, lengths=LENGTHS)
    for b, n in enumerate(LENGTHS):
        assert torch.all(out[n:, b] == 0)
        assert torch.all(out[:n, b] != 0)


@pytest.mark.parametrize("bidir", [False, True])
def test_gradcheck_float64(bidir):
    _, ours = make_pair(3, 4, num_layers=2, bidirectional=bidir, dtype=torch.float64)
    params = list(ours.parameters())
    names = [n for n, _ in ours.named_parameters()]
    g = torch.Generator().manual_seed(1)
    d = 2 if bidir else 1
    x = torch.randn(5, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * d, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * d, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def fn(x, h0, c0, *weights):
        out, (h, c) = torch.func.functional_call(ours, dict(zip(names, weights)), (x, (h0, c0)),
                                                 {"lengths": lengths})
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *[p.detach().requires_grad_() for p in params]))
