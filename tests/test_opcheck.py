"""torch.library.opcheck on the registered operators: schema, fake kernels, autograd registration and
AOT dispatch all agree with the real kernels."""

import pytest
import torch

import detlstm  # noqa: F401
from helpers import make_pair


def _forward_args(layers, bidir, bias, dtype, dropout=0.0, train=False, requires_grad=True):
    _, model = make_pair(3, 4, num_layers=layers, bidirectional=bidir, bias=bias, dtype=dtype)
    d = 2 if bidir else 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 3, generator=g, dtype=dtype, requires_grad=requires_grad)
    h0 = torch.randn(layers * d, 3, 4, generator=g, dtype=dtype, requires_grad=requires_grad)
    c0 = torch.randn(layers * d, 3, 4, generator=g, dtype=dtype, requires_grad=requires_grad)
    weights = [w.detach().clone().requires_grad_(requires_grad) for w in model._flat_weights]
    return (x, torch.tensor([5, 2, 4]), h0, c0, weights, bias, layers, bidir, dropout, train,
            torch.tensor(99, dtype=torch.int64))


@pytest.mark.parametrize("layers,bidir,bias", [(1, False, True), (2, True, True), (2, False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_lstm_forward(layers, bidir, bias, dtype):
    args = _forward_args(layers, bidir, bias, dtype)
    torch.library.opcheck(torch.ops.detlstm.lstm_forward.default, args)


def test_opcheck_lstm_forward_with_dropout():
    args = _forward_args(3, True, True, torch.float32, dropout=0.5, train=True)
    torch.library.opcheck(torch.ops.detlstm.lstm_forward.default, args)


def test_opcheck_lstm_backward():
    args = _forward_args(2, True, True, torch.float64, dropout=0.3, train=True, requires_grad=False)
    out, h, c, layer_out, gates, cells = torch.ops.detlstm.lstm_forward(*args)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out, h, c)]
    (x, lengths, h0, c0, weights, bias, layers, bidir, dropout, train, seed) = args
    bargs = (*grads, x, lengths, h0, c0, weights, out, layer_out, gates, cells, bias, layers, bidir,
             dropout, train, seed)
    torch.library.opcheck(torch.ops.detlstm.lstm_backward.default, bargs)


def test_opcheck_helpers():
    torch.library.opcheck(torch.ops.detlstm.canonical_unary.default, (torch.randn(100), 2))
    torch.library.opcheck(torch.ops.detlstm.philox4x32_10.default,
                          (torch.arange(8, dtype=torch.int64).view(2, 4), 1, 2))
