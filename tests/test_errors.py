"""Bad input gets a clear exception naming the problem, raised before any kernel runs."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import detlstm
from helpers import Shape, forward_args, make_pair

T, B, I, H = 5, 3, 4, 6


@pytest.fixture
def model():
    return make_pair(I, H, num_layers=2, bidirectional=True)[1]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dropout=-0.1), ValueError, "dropout should be a number in range"),
        (dict(dropout=1.5), ValueError, "dropout should be a number in range"),
        (dict(dropout=True), ValueError, "dropout should be a number in range"),
        (dict(dropout=float("nan")), ValueError, "dropout should be a number in range"),
        (dict(dropout="0.1"), ValueError, "dropout should be a number in range"),
        (dict(hidden_size=0), ValueError, "hidden_size must be greater than zero"),
        (dict(hidden_size=2.0), TypeError, "hidden_size should be of type int"),
        (dict(input_size=0), ValueError, "input_size must be greater than zero"),
        (dict(num_layers=0), ValueError, "num_layers must be greater than zero"),
        (dict(bias=1), TypeError, "bias should be of type bool"),
        (dict(batch_first=None), TypeError, "batch_first should be of type bool"),
        (dict(proj_size=-1), ValueError, "proj_size should be a positive integer"),
        (dict(proj_size=6), ValueError, "proj_size has to be smaller than hidden_size"),
        (dict(dtype=torch.int32), ValueError, "float32, float64, float16 and bfloat16"),
    ],
)
def test_constructor_rejects(kwargs, exc, match):
    args = dict(input_size=I, hidden_size=H, num_layers=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        detlstm.LSTM(**args)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        detlstm.LSTM(I, H, num_layers=1, dropout=0.5)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda m: m(_x(T)), ValueError, "Expected input to be 2D or 3D, got 1D"),
        (lambda m: m(_x(T, B, I, 1)), ValueError, "Expected input to be 2D or 3D, got 4D"),
        (lambda m: m(_x(T, B, I + 1)), RuntimeError, "input.size\\(-1\\) must be equal to input_size"),
        (lambda m: m(_x(T, B, I, dtype=torch.float64)), ValueError, "^RNN input dtype .* does not match weight dtype"),
        (lambda m: m(_x(T, B, I).int()), ValueError, "does not match weight dtype"),
        (lambda m: m("not a tensor"), TypeError, "Tensor or a PackedSequence"),
        (lambda m: m(_x(0, B, I)), RuntimeError, "^Expected sequence length to be larger than 0 in RNN$"),
        # hx
        (lambda m: m(_x(T, B, I), (_x(4, B, H), _x(4, B, H), _x(1))), RuntimeError, "hx must be a tuple"),
        (lambda m: m(_x(T, B, I), _x(4, B, H)), RuntimeError, "hx must be a tuple"),
        (lambda m: m(_x(T, B, I), (_x(4, B, H), _x(4, H))), RuntimeError, "hx and cx should also be 3-D"),
        (lambda m: m(_x(T, I), (_x(4, B, H), _x(4, B, H))), RuntimeError, "hx and cx should also be 2-D"),
        (lambda m: m(_x(T, B, I), (_x(2, B, H), _x(4, B, H))), RuntimeError, "Expected hidden\\[0\\] size"),
        (lambda m: m(_x(T, B, I), (_x(4, B, H), _x(4, B + 1, H))), RuntimeError, "Expected hidden\\[1\\] size"),
        (lambda m: m(_x(T, B, I), (_x(4, B, H, dtype=torch.float64), _x(4, B, H))), RuntimeError,
         "hx\\[0\\] has dtype"),
        # lengths
        (lambda m: m(_x(T, B, I), lengths=[T, T]), ValueError, "one entry per sequence: expected 3, got 2"),
        (lambda m: m(_x(T, B, I), lengths=[T, 0, 2]), ValueError, "every length must lie in \\[1, 5\\]"),
        (lambda m: m(_x(T, B, I), lengths=[T, T + 1, 2]), ValueError, "every length must lie in \\[1, 5\\]"),
        (lambda m: m(_x(T, B, I), lengths=[-1, 2, 2]), ValueError, "every length must lie"),
        (lambda m: m(_x(T, B, I), lengths=torch.tensor([2.0, 2.0, 2.0])), ValueError, "integer tensor"),
        (lambda m: m(_x(T, B, I), lengths=torch.ones(3, 1, dtype=torch.long)), ValueError, "must be 1-D"),
        (lambda m: m(_x(T, B, I), lengths=[2, 2.5, 2]), ValueError, "only ints"),
        (lambda m: m(_x(T, B, I), lengths=list(torch.tensor([2.0, 2.0, 2.0]))), ValueError, "only ints"),
        (lambda m: m(_x(T, B, I), lengths=5), ValueError, "1-D integer tensor or a sequence"),
        (lambda m: m(_x(T, I), lengths=[T]), ValueError, "needs a batched"),
        (lambda m: m(pack_padded_sequence(_x(T, B, I), [5, 4, 2]), lengths=[5, 4, 2]), ValueError,
         "PackedSequence carries its own lengths"),
        # dropout seed
        (lambda m: m(_x(T, B, I), dropout_seed=-1), ValueError, "dropout_seed must be an int"),
        (lambda m: m(_x(T, B, I), dropout_seed=2**64), ValueError, "dropout_seed must be an int"),
        (lambda m: m(_x(T, B, I), dropout_seed=1.5), ValueError, "dropout_seed must be an int"),
    ],
)
def test_forward_rejects(model, call, exc, match):
    with pytest.raises(exc, match=match):
        call(model)


def test_operator_checks_its_own_arguments():
    """Direct calls to the registered operator get RuntimeErrors, not crashes."""
    ops = torch.ops.detlstm
    good, _ = forward_args(2, True, shape=Shape(T, B, I, H, (T,) * B), dropout_seed=0, requires_grad=True)
    w = good[4]

    def bad(index, value, match):
        args = list(good)
        args[index] = value
        with pytest.raises(RuntimeError, match=match):
            ops.lstm_forward(*args)

    bad(1, torch.tensor([T, 0, 1]), "lengths must lie in")
    bad(1, torch.tensor([T, T]), "one entry per batch row")
    bad(1, torch.tensor([1.0, 2.0, 3.0]), "int64 or int32")
    bad(2, torch.zeros(4, B, H + 1), "h0 must have shape")
    bad(3, torch.zeros(4, B, H, dtype=torch.float64), "c0 has dtype")
    bad(4, w[:-1], "weight tensors")
    bad(4, [w[0].t()] + w[1:], "must have shape")
    bad(6, 3, "weight tensors")
    bad(8, math.nan, "dropout must be a finite probability")
    bad(8, 1.5, "dropout must be a finite probability")
    bad(10, torch.zeros(2, dtype=torch.int64), "seed must be")
    bad(0, good[0].half(), "float32 or float64")
    bad(11, -1, "proj_size must be >= 0")
    bad(11, 2, "weight tensors for 2 layer")  # weights without w_hr, proj_size says there are some
    assert ops.lstm_forward(*good)[0].shape == (T, B, 2 * H)


def test_nan_input_propagates_like_nn_lstm():
    ref, ours = make_pair(I, H, num_layers=2, bidirectional=True)
    x = _x(T, B, I)
    x[2, 1, 0] = float("nan")
    o1, (h1, c1) = ref(x)
    o2, (h2, c2) = ours(x)
    assert torch.equal(o1.isnan(), o2.isnan())
    assert torch.equal(h1.isnan(), h2.isnan())
    assert torch.equal(c1.isnan(), c2.isnan())
    torch.testing.assert_close(o2[~o2.isnan()], o1[~o1.isnan()], rtol=2e-4, atol=2e-5)


def test_reverse_padded_rejects_bad_lengths():
    with pytest.raises(ValueError, match="every length must lie"):
        detlstm.reverse_padded(_x(T, B, I), [1, 2, 9])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        detlstm.reverse_padded(_x(T), [1])
