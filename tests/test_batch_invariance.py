"""G3: a sequence's outputs, final state and input gradient are the same bits whatever else is in
its batch: alone, inside a batch, after shuffling, and with extra padding (dropout off / eval)."""

import pytest
import torch

from helpers import assert_bitwise_equal, make_pair

I, H = 9, 21
LENGTHS = [12, 3, 7, 12, 1, 9, 5]


def _per_sequence(model, xs, lengths, order, pad_to, h0s, c0s):
    """Runs the sequences `order` as one batch padded to pad_to; returns per original index the
    valid output, h_n, c_n, and the gradients of x (valid steps), h0 and c0."""
    batch = len(order)
    x = torch.zeros(pad_to, batch, I)
    for j, k in enumerate(order):
        x[: lengths[k], j] = xs[k]
    x.requires_grad_()
    h0 = torch.stack([h0s[k] for k in order], 1).requires_grad_()
    c0 = torch.stack([c0s[k] for k in order], 1).requires_grad_()
    out, (h, c) = model(x, (h0, c0), lengths=[lengths[k] for k in order])
    # A loss whose gradient w.r.t. each sequence's results depends on that sequence alone.
    loss = 0
    for j, k in enumerate(order):
        g = torch.Generator().manual_seed(100 + k)
        loss = loss + (out[: lengths[k], j] * torch.randn(lengths[k], out.shape[-1], generator=g)).sum()
        loss = loss + (h[:, j] * torch.randn(h.shape[0], h.shape[-1], generator=g)).sum()
        loss = loss + (c[:, j] * torch.randn(c.shape[0], c.shape[-1], generator=g)).sum()
    gx, gh, gc = torch.autograd.grad(loss, [x, h0, c0])
    return {k: (out[: lengths[k], j], h[:, j], c[:, j], gx[: lengths[k], j], gh[:, j], gc[:, j])
            for j, k in enumerate(order)}


@pytest.mark.parametrize("layers,bidir,proj", [(1, False, 0), (2, True, 0), (3, True, 0), (2, True, 4)])
@pytest.mark.parametrize("training", [False, True])
def test_sequence_results_do_not_depend_on_the_batch(layers, bidir, proj, training):
    _, model = make_pair(I, H, num_layers=layers, bidirectional=bidir, dropout=0.5 if training else 0.0,
                         proj_size=proj)
    # eval mode with dropout configured, or training with dropout 0: no masks either way
    model.train(training)
    if training:
        model.dropout = 0.0
    g = torch.Generator().manual_seed(7)
    n = len(LENGTHS)
    xs = [torch.randn(L, I, generator=g) for L in LENGTHS]
    d = layers * (2 if bidir else 1)
    h0s = [torch.randn(d, proj or H, generator=g) for _ in range(n)]
    c0s = [torch.randn(d, H, generator=g) for _ in range(n)]
    full = _per_sequence(model, xs, LENGTHS, list(range(n)), max(LENGTHS), h0s, c0s)
    shuffled = _per_sequence(model, xs, LENGTHS, [4, 2, 6, 0, 5, 1, 3], max(LENGTHS), h0s, c0s)
    padded = _per_sequence(model, xs, LENGTHS, list(range(n)), max(LENGTHS) + 6, h0s, c0s)
    pairs = _per_sequence(model, xs, LENGTHS, [1, 3], max(LENGTHS), h0s, c0s)
    for k in range(n):
        alone = _per_sequence(model, xs, LENGTHS, [k], LENGTHS[k], h0s, c0s)[k]
        for name, other in (("batch", full), ("shuffled", shuffled), ("padded", padded), ("pair", pairs)):
            if k not in other:
                continue
            for what, a, b in zip(("out", "h_n", "c_n", "dx", "dh0", "dc0"), alone, other[k]):
                assert_bitwise_equal(a, b, f"sequence {k} alone vs {name}: {what}")
