"""Drop-in at scale: the shapes of PyTorch's own LSTM module tests (batched and unbatched inputs,
with and without hx) over every combination of bias, batch_first, bidirectional and proj_size in
{0, 2}, compared with torch.nn.LSTM; plus projections through every input form and gradcheck."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import make_pair

INPUT, HIDDEN, LAYERS, T, B = 3, 5, 2, 4, 3


@pytest.mark.parametrize("bias,batch_first,bidirectional,proj_size,unbatched,with_hx",
                         list(itertools.product([True, False], [True, False], [True, False], [0, 2],
                                                [True, False], [True, False])))
def test_matches_nn_lstm(bias, batch_first, bidirectional, proj_size, unbatched, with_hx):
    ref, ours = make_pair(INPUT, HIDDEN, num_layers=LAYERS, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional, proj_size=proj_size, dtype=torch.float64)
    d = LAYERS * (2 if bidirectional else 1)
    real = proj_size or HIDDEN
    g = torch.Generator().manual_seed(0)
    if unbatched:
        x = torch.randn(T, INPUT, generator=g, dtype=torch.float64)
        hx = (torch.randn(d, real, generator=g, dtype=torch.float64),
              torch.randn(d, HIDDEN, generator=g, dtype=torch.float64))
    else:
        x = torch.randn((B, T, INPUT) if batch_first else (T, B, INPUT), generator=g, dtype=torch.float64)
        hx = (torch.randn(d, B, real, generator=g, dtype=torch.float64),
              torch.randn(d, B, HIDDEN, generator=g, dtype=torch.float64))
    results = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        hi = tuple(t.clone().requires_grad_() for t in hx) if with_hx else None
        out, (h, c) = model(xi, hi)
        assert h.shape[-1] == real and c.shape[-1] == HIDDEN
        loss = out.square().sum() + h.sum() + c.sum()
        leaves = [xi] + (list(hi) if with_hx else []) + list(model.parameters())
        results.append([out, h, c, *torch.autograd.grad(loss, leaves)])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["packed_unsorted", "lengths"])
def test_projections_with_variable_lengths(form):
    ref, ours = make_pair(INPUT, HIDDEN, num_layers=3, bidirectional=True, proj_size=2, dtype=torch.float64)
    x = torch.randn(T + 2, B, INPUT, dtype=torch.float64)
    lengths = [6, 2, 4]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    r_out, (r_h, r_c) = ref(packed)
    if form == "lengths":
        out, (h, c) = ours(x, lengths=lengths)
        r_out, _ = torch.nn.utils.rnn.pad_packed_sequence(r_out, total_length=T + 2)
    else:
        out, (h, c) = ours(packed)
        out, r_out = out.data, r_out.data
    torch.testing.assert_close(out, r_out, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h, r_h, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(c, r_c, rtol=1e-9, atol=1e-12)


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
