"""Shared test helpers: building matched nn.LSTM / detlstm.LSTM pairs, running every input form, and
comparing results bit for bit."""

import hashlib

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import detlstm


def make_pair(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
              bidirectional=False, dtype=torch.float32, seed=0, proj_size=0):
    torch.manual_seed(seed)
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, dropout=dropout,
                  bidirectional=bidirectional, dtype=dtype, proj_size=proj_size)
    ref = torch.nn.LSTM(input_size, hidden_size, **kwargs)
    ours = detlstm.LSTM(input_size, hidden_size, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: compare the raw words
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def assert_bitwise_equal(a, b, what=""):
    if isinstance(a, PackedSequence):
        a, b = a.data, b.data
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} vs {b.dtype}"
    if tensor_bytes(a) != tensor_bytes(b):
        diff = (a.double() - b.double()).abs()
        raise AssertionError(f"{what}: not bitwise equal (max abs diff {diff.max().item():.3e}, "
                             f"{(a != b).sum().item()} elements differ)")


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_bytes(t))
    return h.hexdigest()


def run_with_grads(model, inputs, loss_weights_seed=123, **kwargs):
    """Forward, a fixed random linear loss over output, h_n and c_n, backward. Returns the output,
    h_n, c_n and the gradients of every leaf in `inputs` and every parameter of model."""
    out, (h_n, c_n) = model(*inputs, **kwargs)
    data = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(loss_weights_seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (data, h_n, c_n))
    flat = []
    for t in inputs:
        flat.extend(t if isinstance(t, (tuple, list)) else [t])
    leaves = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves += [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return out, h_n, c_n, list(grads)
