"""The CPU kernels' speed paths change no bit: every instruction-set build (AVX-512 tiles with
in-register folds, the cell on vector pairs, AVX2, portable) on shapes large enough that the scratch
buffers take the huge-page allocation (>= 2 MiB), with row and unit counts that leave odd vector
pairs and scalar tails; and the per-phase clock counts the work it should and changes nothing."""

import pytest
import torch

import detlstm
from detlstm import _ops
from detlstm._info import cpu_variants
from helpers import assert_results_equal, forward_backward, make_pair


def _run_all_builds(make, run):
    current, _, variants = cpu_variants()
    results = {}
    try:
        for variant in variants:
            detlstm.set_cpu_variant(variant)
            results[variant] = run(make())
    finally:
        detlstm.set_cpu_variant(current)
    return variants, results


@pytest.mark.parametrize("features,hidden,bidirectional,proj",
                         [(48, 136, True, 0), (48, 40, False, 0), (48, 72, True, 24), (7, 40, True, 0)])
def test_every_build_gives_the_same_bits_on_large_buffers(features, hidden, bidirectional, proj):
    # 64 steps x 33 rows x 4H gate columns: da and the gate buffers are 2-9 MiB per direction;
    # H = 136 = 8.5 AVX-512 vectors, 40 = 2.5, 72 = 4.5: pairs, odd singles and scalar tails.
    # 7 input features: dW_ih has no whole 16-column strip, while dW_hh, which shares its packed
    # slices of da (GemmGroup::shared_a), has two: the packing must still happen for it.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 33, features, generator=g)
    lengths = [64] * 20 + [63, 50, 40, 33, 20, 17, 9, 8, 5, 3, 2, 1, 1]

    def make():
        _, m = make_pair(features, hidden, num_layers=2, bidirectional=bidirectional, dropout=0.25,
                         proj_size=proj)
        m.train()
        return m

    variants, results = _run_all_builds(
        make, lambda m: forward_backward(m, "lengths", x, None, lengths, loss_seed=3, dropout_seed=5))
    if len(variants) == 1:
        pytest.skip("this processor runs only the portable build")
    for variant in variants[1:]:
        assert_results_equal(results[variant], results["generic"], f"{variant} vs generic")


def test_phase_clock_counts_the_work_and_changes_nothing():
    T, B, I, H = 12, 5, 7, 9
    lengths = torch.tensor([12, 12, 8, 3, 1])
    R = int(lengths.sum())
    _, m = make_pair(I, H, num_layers=1, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float32, requires_grad=True)

    def call():
        out, (h, c) = m(x, lengths=lengths)
        grads = torch.autograd.grad((out.sum() + h.sum() + c.sum()), [x] + list(m.parameters()))
        return [out, h, c, *grads]

    _ops.set_cpu_phase_timing(False)
    _ops.take_cpu_phase_times()
    off = call()
    assert all(sec == 0 and fma == 0 for sec, fma in _ops.take_cpu_phase_times().values())
    _ops.set_cpu_phase_timing(True)
    try:
        on = call()
        times = _ops.take_cpu_phase_times()
    finally:
        _ops.set_cpu_phase_timing(False)
    assert_results_equal(on, off, "phase clock on vs off")
    G, D = 4 * H, 2
    expected = {"input_projection": R * D * I * G, "recurrence": R * D * H * G,
                "recurrence_backward": (R - B) * D * G * H, "initial_state_gradients": D * B * G * H,
                "input_gradient": R * D * G * I, "weight_gradients": R * D * G * (I + H),
                "bias_gradients": 0}
    assert set(times) == set(expected)
    for phase, fmas in expected.items():
        assert times[phase][1] == fmas, phase
        assert times[phase][0] > 0, phase
