"""The CPU recurrences' two ways of spreading over threads (csrc/cpu/lstm_cpu_impl.h,
sequence_groups): by units (a parallel region per step over blocks of hidden units) and by
sequences (each thread runs every step of its own group of one direction's rows). Which one runs
depends on the thread count and the shape; both must give the same bits as each other, at every
thread count, forward and backward, in every configuration the recurrences branch on: uneven
lengths (groups lose rows at different steps), both directions, projections, given initial
states, dropout between layers, fewer rows than threads, float64."""

import pytest
import torch

from detlstm import _ops
from helpers import assert_results_equal, forward_backward, make_pair


@pytest.fixture
def split_and_threads():
    """Restores the split setting and the thread count after the test."""
    threads = torch.get_num_threads()
    before = _ops.set_cpu_recurrence_split()
    yield
    _ops.set_cpu_recurrence_split(before)
    torch.set_num_threads(threads)


CASES = {
    # name: (input, hidden, layers, bidirectional, proj, dtype, lengths, initial states)
    "uneven-bi": (24, 40, 2, True, 0, torch.float32, [12, 3, 12, 7, 1, 9, 12, 5, 2, 11, 12], False),
    "full-uni-h0": (32, 48, 1, False, 0, torch.float32, [10] * 19, True),
    "proj-uneven": (20, 36, 2, True, 12, torch.float32, [9, 9, 4, 1, 6, 8, 2, 9, 3], True),
    "two-rows": (16, 32, 2, True, 0, torch.float32, [7, 4], False),
    "one-row": (16, 32, 1, False, 0, torch.float32, [6], True),
    "float64": (12, 20, 2, True, 0, torch.float64, [8, 2, 8, 5, 7], True),
}


def _results(case):
    inputs, hidden, layers, bidirectional, proj, dtype, lengths, with_states = CASES[case]
    torch.manual_seed(3)
    _, model = make_pair(inputs, hidden, num_layers=layers, bidirectional=bidirectional,
                         dropout=0.3, proj_size=proj, dtype=dtype)
    model.train()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(max(lengths), len(lengths), inputs, generator=g, dtype=dtype)
    hx = None
    if with_states:
        d = 2 if bidirectional else 1
        hx = (torch.randn(layers * d, len(lengths), proj or hidden, generator=g, dtype=dtype),
              torch.randn(layers * d, len(lengths), hidden, generator=g, dtype=dtype))
    trained = forward_backward(model, "lengths", x, hx, lengths, loss_seed=7, dropout_seed=11)
    model.eval()
    with torch.no_grad():
        out, (h, c) = model(x, hx, lengths=torch.tensor(lengths))
    return trained + [out, h, c]


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_splits_give_the_same_bits_at_every_thread_count(split_and_threads, case):
    _ops.set_cpu_recurrence_split("units")
    torch.set_num_threads(1)
    reference = _results(case)
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        for split in ("units", "sequences", "auto"):
            _ops.set_cpu_recurrence_split(split)
            assert_results_equal(reference, _results(case), f"{case}: {split}, {threads} threads")


def test_split_setting_names(split_and_threads):
    _ops.set_cpu_recurrence_split("sequences")
    assert _ops.set_cpu_recurrence_split("") == "sequences"
    assert _ops.set_cpu_recurrence_split("units") == "sequences"
    with pytest.raises(RuntimeError, match="'auto', 'units' or 'sequences'"):
        _ops.set_cpu_recurrence_split("rows")
    assert _ops.set_cpu_recurrence_split("") == "units"
