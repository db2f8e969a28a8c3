"""The LSTM of detlstm::lstm_forward written with differentiable torch operations.

Our kernels give first derivatives (the backward operator). Second derivatives (double backward,
gradient penalties, Hessian-vector products) and forward-mode derivatives (jvp, forward AD) come from
this module: the same model (lengths, each reverse direction starting at its sequence's own end,
projections, the same Philox dropout masks), differentiated by autograd. Its values are ordinary
torch arithmetic, not the canonical arithmetic, so it never supplies a result's bits: only derivatives
of a derivative, or the tangents of forward mode.
"""

import torch

from ._ops import ops

_WORD = 0xFFFFFFFF


def weights_per_direction(has_biases: bool, proj_size: int) -> int:
    """How many tensors of nn.LSTM's flat list belong to one (layer, direction)."""
    return (4 if has_biases else 2) + (1 if proj_size > 0 else 0)


def dropout_scales(seed: torch.Tensor, p: float, layer: int, steps: int, batch: int,
                   features: int, like: torch.Tensor) -> torch.Tensor:
    """(T, B, F): 1/(1-p) where the kernels keep an element of layer `layer`'s output, 0 where they
    drop it. The draws are the kernels' (docs/ARITHMETIC.md, dropout): Philox4x32-10 with counter
    (feature // 4, row, step, layer), key = the seed's two 32-bit words, keep when word
    feature % 4 >= round(p * 2^32)."""
    seed_bits = int(seed.item()) & ((1 << 64) - 1)
    t, b, g = torch.meshgrid(torch.arange(steps), torch.arange(batch),
                             torch.arange((features + 3) // 4), indexing="ij")
    counters = torch.stack([g, b, t, torch.full_like(t, layer)], -1).reshape(-1, 4)
    words = ops.philox4x32_10(counters, seed_bits & _WORD, seed_bits >> 32)
    words = words.reshape(steps, batch, -1)[..., :features]
    threshold = 1 << 32 if p >= 1.0 else round(p * 4294967296.0)
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    scales = torch.where(words >= threshold, torch.tensor(scale, dtype=like.dtype),
                         torch.tensor(0.0, dtype=like.dtype))
    return scales.to(like.device)


def _direction(x, active, h, c, w, has_biases, proj_size, reverse):
    """One direction of one layer: (output (T, B, R), h at each row's end, c at each row's end).
    Rows whose step is past their length keep their state and output zeros."""
    w_ih, w_hh = w[0], w[1]
    pre = x @ w_ih.t()
    if has_biases:
        pre = pre + (w[2] + w[3])
    outputs = [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        i, f, g, o = (pre[t] + h @ w_hh.t()).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if proj_size > 0:
            h_new = h_new @ w[-1].t()
        row_active = active[t].unsqueeze(1)
        outputs[t] = torch.where(row_active, h_new, torch.zeros_like(h_new))
        h = torch.where(row_active, h_new, h)
        c = torch.where(row_active, c_new, c)
    return torch.stack(outputs), h, c


def lstm_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout,
                 train, seed, proj_size):
    """(output, h_n, c_n) of detlstm::lstm_forward for the same arguments, differentiably."""
    steps, batch = input.shape[0], input.shape[1]
    directions = 2 if bidirectional else 1
    per = weights_per_direction(has_biases, proj_size)
    active = torch.arange(steps, device=input.device).unsqueeze(1) < lengths.to(input.device)
    layer_input, h_n, c_n = input, [], []
    for layer in range(num_layers):
        if layer > 0 and train and dropout > 0:
            layer_input = layer_input * dropout_scales(seed, dropout, layer - 1, steps, batch,
                                                       layer_input.shape[-1], layer_input)
        outputs = []
        for direction in range(directions):
            group = layer * directions + direction
            out, h, c = _direction(layer_input, active, h0[group], c0[group],
                                   weights[group * per:(group + 1) * per], has_biases, proj_size,
                                   reverse=direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, -1)
    return layer_input, torch.stack(h_n), torch.stack(c_n)
