"""detlstm::lstm_inference, the forward of a call nothing will differentiate: the same bits as
lstm_forward's output, h_n and c_n, keeping no activations (the CPU runs a window of steps at a
time, CUDA one layer's gates and cells; both take two layer-output slices in turn); detlstm.LSTM
takes it under torch.no_grad."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import detlstm
from detlstm._ops import ops
from helpers import SMALL, Shape, assert_bitwise_equal, forward_args

# (layers, bidirectional, bias, proj_size, dropout in training): two layers use one layer-output
# slice, three both, five take each twice.
CASES = [(1, False, True, 0, 0.0), (2, True, True, 0, 0.5), (3, False, False, 0, 0.3),
         (5, True, True, 0, 0.4), (3, True, True, 3, 0.2), (4, False, True, 2, 0.0)]


@pytest.mark.parametrize("layers,bidir,bias,proj,dropout", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_is_the_forwards_results(layers, bidir, bias, proj, dropout, dtype):
    args, _ = forward_args(layers, bidir, bias, proj, dtype, shape=SMALL, dropout=dropout,
                           train=dropout > 0)
    want = ops.lstm_forward(*args)[:3]
    got = ops.lstm_inference(*args)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert_bitwise_equal(a, b, f"lstm_inference {name}")
    assert got[0].abs().sum() > 0


# Windows of steps (the CPU runs 1024 / B steps at a time up to hidden 256): batch 128 gives 8-step windows over 29
# steps, with lengths that end inside windows, on their edges, and at 1.
WINDOWED = Shape(29, 128, 6, 16, tuple([29, 1, 8, 9, 16, 17, 24, 25] * 16))


@pytest.mark.parametrize("layers,bidir,proj,dropout", [(1, False, 0, 0.0), (3, True, 0, 0.4),
                                                      (2, True, 5, 0.3)])
@pytest.mark.parametrize("split", ["units", "sequences"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_inference_windows_give_the_forwards_bits(layers, bidir, proj, dropout, split, threads):
    args, _ = forward_args(layers, bidir, True, proj, torch.float32, shape=WINDOWED,
                           dropout=dropout, train=dropout > 0)
    before_threads, before_split = torch.get_num_threads(), detlstm._ops.set_cpu_recurrence_split(split)
    torch.set_num_threads(threads)
    try:
        want = ops.lstm_forward(*args)[:3]
        got = ops.lstm_inference(*args)
    finally:
        torch.set_num_threads(before_threads)
        detlstm._ops.set_cpu_recurrence_split(before_split)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert_bitwise_equal(a, b, f"lstm_inference {name}, {split}, {threads} threads")


# Edges of the windows: batch 1100 (windows of kMinWindowSteps = 4 steps over 9), float64; a
# longest sequence shorter than T (whole windows with no rows), five layers with projections; and
# hidden 320, where the 4 MiB cap on a window's pre-activations (819 rows) gives 8-step windows at
# batch 100.
EDGES = [(Shape(9, 1100, 3, 5, tuple([9, 1, 4, 5, 8] * 220)), 2, True, 0, torch.float64),
         (Shape(20, 100, 8, 320, tuple([20, 1, 8, 9, 16, 17, 3, 12, 19, 7] * 10)), 2, True, 0,
          torch.float32),
         (Shape(23, 200, 4, 6, tuple([17, 1, 4, 8, 9, 16, 12, 5] * 25)), 5, True, 3, torch.float64),
         (Shape(1, 3, 4, 6, (1, 1, 1)), 3, True, 2, torch.float32)]


@pytest.mark.parametrize("case", range(len(EDGES)))
@pytest.mark.parametrize("split", ["units", "sequences"])
def test_inference_window_edges(case, split):
    shape, layers, bidir, proj, dtype = EDGES[case]
    args, _ = forward_args(layers, bidir, True, proj, dtype, shape=shape, dropout=0.3, train=True)
    before = detlstm._ops.set_cpu_recurrence_split(split)
    try:
        want = ops.lstm_forward(*args)[:3]
        got = ops.lstm_inference(*args)
    finally:
        detlstm._ops.set_cpu_recurrence_split(before)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert_bitwise_equal(a, b, f"lstm_inference {name}, edge case {case}, {split}")


@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_inference_windows_in_every_cpu_build(variant):
    from detlstm._info import cpu_variants
    if variant not in cpu_variants()[2]:
        pytest.skip(f"this CPU cannot run the {variant} build")
    args, _ = forward_args(2, True, True, 0, torch.float32, shape=WINDOWED, dropout=0.3, train=True)
    before = detlstm.set_cpu_variant(variant)
    try:
        want = ops.lstm_forward(*args)[:3]
        got = ops.lstm_inference(*args)
    finally:
        detlstm.set_cpu_variant(before)
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert_bitwise_equal(a, b, f"lstm_inference {name}, {variant} build")


def test_inference_refuses_a_backward():
    args, _ = forward_args(2, True, True, 0, torch.float64, requires_grad=True)
    out = ops.lstm_inference(*args)[0]
    with pytest.raises(RuntimeError, match="keeps no activations"):
        out.sum().backward()


class _Operators(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.called = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.called.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [False, True])
def test_module_under_no_grad_runs_inference(train):
    """Under no_grad the module calls lstm_inference (dropout too, in training mode), and gets the
    bits of a call with gradients on."""
    torch.manual_seed(0)
    model = detlstm.LSTM(5, 7, num_layers=3, bidirectional=True, dropout=0.4).train(train)
    x = torch.randn(6, 4, 5)
    with_grad = model(x, lengths=[6, 2, 5, 3], dropout_seed=11)
    recorder = _Operators()
    with torch.no_grad(), recorder:
        without = model(x, lengths=[6, 2, 5, 3], dropout_seed=11)
    assert "detlstm.lstm_inference.default" in recorder.called
    assert "detlstm.lstm_forward.default" not in recorder.called
    assert_bitwise_equal(without[0], with_grad[0], "output")
    for a, b in zip(without[1], with_grad[1]):
        assert_bitwise_equal(a, b, "state")


def _large_bytes_of_one_call(run):
    """What one call allocates in large CPU buffers: the block cache, emptied first, holds every
    large block the call freed (its returned tensors dropped at once)."""
    detlstm.empty_cpu_cache()
    run()
    return detlstm.cpu_cache_info()["cached_bytes"]


def test_inference_keeps_one_layers_activations():
    """A 3-layer bidirectional call under no_grad allocates at least two layers' gates and cells
    less than the same call with gradients on (the windows of the CPU save more; the bench's
    memory notes measure them)."""
    torch.manual_seed(0)
    T, B, H, L, D = 40, 16, 64, 3, 2
    model = detlstm.LSTM(H, H, num_layers=L, bidirectional=True).eval()
    x = torch.randn(T, B, H)
    with torch.no_grad():
        lean = _large_bytes_of_one_call(lambda: model(x))
    full = _large_bytes_of_one_call(lambda: model(x))
    per_layer = D * T * B * (4 * H + H) * 4  # gates and cells, float32
    assert full - lean >= 0.95 * (L - 1) * per_layer, (full, lean)


def test_inference_window_holds_at_most_4_mib_of_pre_activations():
    """At hidden 512 a window is 512 rows (4 MiB of pre-activations), not 1,024: an inference call's
    large buffers are its output, the packed W_ih and W_hh, that window and small state buffers."""
    torch.manual_seed(0)
    T, B, H = 64, 64, 512
    model = detlstm.LSTM(H, H).eval()
    x = torch.randn(T, B, H)
    with torch.no_grad():
        used = _large_bytes_of_one_call(lambda: model(x))
    output, weights = T * B * H * 4, 2 * 4 * H * H * 4
    assert used <= output + weights + (4 << 20) + (2 << 20), used
