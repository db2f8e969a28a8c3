"""Seeded dropout between layers (DESIGN.md, ARITHMETIC.md rule 7): the mask is Philox4x32-10 keyed by
the seed, with counter (feature/4, row, step, layer); kept values are scaled by 1/(1-p) rounded to
float32; nothing is dropped after the last layer, in eval mode or with p = 0."""

import numpy as np
import pytest
import torch

import detlstm
from detlstm._ops import philox4x32_10
from helpers import assert_bitwise_equal, assert_results_equal, make_pair

T, B, I, H = 8, 5, 6, 10
LENGTHS = [8, 3, 6, 1, 8]


def _mask(seed, layer, steps, batch, width, p):
    t, b, f = np.meshgrid(np.arange(steps), np.arange(batch), np.arange(width), indexing="ij")
    counters = np.stack([f // 4, b, t, np.full_like(t, layer)], -1).reshape(-1, 4)
    draws = philox4x32_10(torch.from_numpy(counters.astype(np.int64)), seed & 0xFFFFFFFF, seed >> 32)
    draw = draws.numpy()[np.arange(counters.shape[0]), (f.reshape(-1) % 4)]
    threshold = min(round(p * 2**32), 2**32)
    return torch.from_numpy((draw >= threshold).reshape(steps, batch, width))


def _single_layer(full, layer, input_size):
    single = detlstm.LSTM(input_size, H, bidirectional=full.bidirectional)
    suffixes = ["", "_reverse"] if full.bidirectional else [""]
    state = {}
    for s in suffixes:
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            state[f"{kind}_l0{s}"] = getattr(full, f"{kind}_l{layer}{s}")
    single.load_state_dict(state)
    return single


@pytest.mark.parametrize("p", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
def test_mask_is_the_documented_function_and_sits_between_layers(p, seed):
    """A 2-layer LSTM with dropout equals: layer 0, then the Philox mask and 1/(1-p) applied in
    Python, then layer 1; forward and every gradient, bit for bit."""
    _, full = make_pair(I, H, num_layers=2, bidirectional=True, dropout=p)
    full.train()
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(T, B, I, generator=g)

    x = x0.clone().requires_grad_()
    out, (h, c) = full(x, lengths=LENGTHS, dropout_seed=seed)
    loss = (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum() + h.sum()
    grads_full = torch.autograd.grad(loss, [x] + list(full.parameters()))

    l0, l1 = _single_layer(full, 0, I), _single_layer(full, 1, 2 * H)
    x = x0.clone().requires_grad_()
    y0, (h0n, c0n) = l0(x, lengths=LENGTHS)
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1 else float("inf"), dtype=torch.float64).float()
    keep = _mask(seed, 0, T, B, 2 * H, p)
    # scale only where kept, so a dropped element's gradient is 0 (not 0 * inf) when p = 1
    x1 = torch.where(keep, y0 * torch.where(keep, scale, torch.zeros(())), torch.zeros(()))
    out2, (h1n, c1n) = l1(x1, lengths=LENGTHS)
    loss2 = (out2 * torch.randn(out2.shape, generator=torch.Generator().manual_seed(1))).sum() \
        + torch.cat([h0n, h1n]).sum()
    grads_parts = torch.autograd.grad(loss2, [x] + list(l0.parameters()) + list(l1.parameters()))

    assert_bitwise_equal(out, out2, "output")
    assert_bitwise_equal(h, torch.cat([h0n, h1n]), "h_n")
    assert_bitwise_equal(c, torch.cat([c0n, c1n]), "c_n")
    assert_results_equal(grads_full, grads_parts, "gradients")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_one_minus_p(p):
    keep = _mask(987654321, 1, 64, 64, 256, p)  # about a million elements
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01


def _out(model, x, **kw):
    return model(x, lengths=LENGTHS, **kw)[0]


def test_no_dropout_in_eval_mode_or_with_p_zero():
    _, model = make_pair(I, H, num_layers=3, bidirectional=True, dropout=0.5)
    x = torch.randn(T, B, I)
    model.eval()
    evaluated = _out(model, x)
    model.train()
    model.dropout = 0.0
    assert_bitwise_equal(evaluated, _out(model, x), "eval vs p=0")
    model.dropout = 0.5
    assert not torch.equal(evaluated, _out(model, x))


def test_manual_seed_controls_dropout_and_calls_differ_without_reseeding():
    _, model = make_pair(I, H, num_layers=2, dropout=0.5)
    model.train()
    x = torch.randn(T, B, I)
    torch.manual_seed(5)
    a, b = _out(model, x), _out(model, x)
    torch.manual_seed(5)
    a2, b2 = _out(model, x), _out(model, x)
    assert_bitwise_equal(a, a2, "first call after manual_seed")
    assert_bitwise_equal(b, b2, "second call after manual_seed")
    assert not torch.equal(a, b), "two training calls without reseeding must differ"


def test_dropout_seed_is_the_whole_randomness():
    _, model = make_pair(I, H, num_layers=2, dropout=0.5)
    model.train()
    x = torch.randn(T, B, I)
    torch.manual_seed(1)
    a = _out(model, x, dropout_seed=42)
    torch.manual_seed(2)
    b = _out(model, x, dropout_seed=42)
    assert_bitwise_equal(a, b, "same dropout_seed under different global seeds")
    assert not torch.equal(a, _out(model, x, dropout_seed=43))
