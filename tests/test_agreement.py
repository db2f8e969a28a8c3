"""detlstm.LSTM against torch.nn.LSTM on the CPU: outputs, final states and every gradient, over
layers, directions, bias, batch_first, given/absent hx and every input form."""

import itertools

import pytest
import torch

from helpers import FORMS, SMALL, forward_backward, make_inputs, make_pair

T, B, I, H, LENGTHS = SMALL
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}
CASES = list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True],
                               [False, True], FORMS))


@pytest.mark.parametrize("layers,bidir,bias,batch_first,with_hx,form", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_nn_lstm(layers, bidir, bias, batch_first, with_hx, form, dtype):
    """Output, h_n, c_n and the gradients of x, (h0, c0) and every parameter; nn.LSTM runs "lengths"
    as the packed equivalent."""
    ref, ours = make_pair(I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidir, dtype=dtype, seed=layers * 7 + bidir)
    x, hx = make_inputs(SMALL, form, batch_first, layers, bidir, dtype=dtype, seed=5)
    hx = hx if with_hx else None
    expected, got = [forward_backward(model, form, x, hx, LENGTHS, batch_first, reference=model is ref)
                     for model in (ref, ours)]
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, **TOL[dtype])


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
