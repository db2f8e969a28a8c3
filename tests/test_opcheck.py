"""torch.library.opcheck on the registered operators: schema, fake kernels, autograd registration and
AOT dispatch all agree with the real kernels."""

import pytest
import torch

import detlstm  # noqa: F401  (registers the operators)
from helpers import TINY, backward_args, forward_args


def _forward_args(layers, bidir, bias, dtype, dropout=0.0, train=False, requires_grad=True):
    return forward_args(layers, bidir, bias, dtype=dtype, shape=TINY, dropout=dropout, train=train,
                        dropout_seed=99, requires_grad=requires_grad)


@pytest.mark.parametrize("layers,bidir,bias", [(1, False, True), (2, True, True), (2, False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_lstm_forward(layers, bidir, bias, dtype):
    args, _ = _forward_args(layers, bidir, bias, dtype)
    torch.library.opcheck(torch.ops.detlstm.lstm_forward.default, args)


def test_opcheck_lstm_forward_with_dropout():
    args, _ = _forward_args(3, True, True, torch.float32, dropout=0.5, train=True)
    torch.library.opcheck(torch.ops.detlstm.lstm_forward.default, args)


@pytest.mark.parametrize("layers,bidir,dropout", [(1, False, 0.0), (3, True, 0.5)])
def test_opcheck_lstm_inference(layers, bidir, dropout):
    args, _ = _forward_args(layers, bidir, True, torch.float32, dropout=dropout, train=dropout > 0,
                            requires_grad=False)
    torch.library.opcheck(torch.ops.detlstm.lstm_inference.default, args)


def test_opcheck_lstm_backward():
    args, grads = _forward_args(2, True, True, torch.float64, dropout=0.3, train=True, requires_grad=False)
    out = torch.ops.detlstm.lstm_forward(*args)
    torch.library.opcheck(torch.ops.detlstm.lstm_backward.default, backward_args(args, out, grads))


def test_opcheck_helpers():
    torch.library.opcheck(torch.ops.detlstm.canonical_unary.default, (torch.randn(100), "tanh"))
    torch.library.opcheck(torch.ops.detlstm.philox4x32_10.default,
                          (torch.arange(8, dtype=torch.int64).view(2, 4), 1, 2))
