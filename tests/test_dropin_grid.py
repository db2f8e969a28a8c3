"""Drop-in at scale: the shapes of PyTorch's own LSTM module tests (batched and unbatched inputs,
with and without hx) over every combination of bias, batch_first, bidirectional and proj_size in
{0, 2}, compared with torch.nn.LSTM; plus projections through every input form and gradcheck."""

import itertools

import pytest
import torch

from helpers import Shape, forward_backward, make_inputs, make_pair, run_form

INPUT, HIDDEN, LAYERS, T, B = 3, 5, 2, 4, 3
SHAPE = Shape(T, B, INPUT, HIDDEN, (T,) * B)
TOL = dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias,batch_first,bidirectional,proj_size,unbatched,with_hx",
                         list(itertools.product([True, False], [True, False], [True, False], [0, 2],
                                                [True, False], [True, False])))
def test_matches_nn_lstm(bias, batch_first, bidirectional, proj_size, unbatched, with_hx):
    ref, ours = make_pair(INPUT, HIDDEN, num_layers=LAYERS, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional, proj_size=proj_size, dtype=torch.float64)
    form = "unbatched" if unbatched else "padded"
    x, hx = make_inputs(SHAPE, form, batch_first, LAYERS, bidirectional, proj_size, torch.float64)
    expected, got = [forward_backward(model, form, x, hx if with_hx else None) for model in (ref, ours)]
    assert got[1].shape[-1] == (proj_size or HIDDEN) and got[2].shape[-1] == HIDDEN
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("form", ["packed_unsorted", "lengths"])
def test_projections_with_variable_lengths(form):
    ref, ours = make_pair(INPUT, HIDDEN, num_layers=3, bidirectional=True, proj_size=2, dtype=torch.float64)
    x = torch.randn(T + 2, B, INPUT, dtype=torch.float64)
    lengths = [6, 2, 4]
    expected = run_form(ref, form, x, lengths=lengths, reference=True)
    for a, b in zip(expected, run_form(ours, form, x, lengths=lengths)):
        torch.testing.assert_close(b, a, **TOL)


def test_gradcheck_with_projections():
    _, ours = make_pair(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().requires_grad_() for p in ours.parameters()]
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *weights):
        out, (h, c) = torch.func.functional_call(ours, dict(zip(names, weights)), (x,),
                                                 {"lengths": torch.tensor([4, 2])})
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, *params))
