"""Helpers around the module: converting nn.LSTM models, reversing padded sequences."""

import torch
from torch import nn

from .module import LSTM, _check_lengths


def reverse_padded(x: torch.Tensor, lengths, batch_first: bool = False) -> torch.Tensor:
    """Reverse each sequence of a padded batch within its own length; padding positions stay put.

    x is (T, B, *) (or (B, T, *) with batch_first); lengths has B values in [1, T]. Differentiable.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor with at least 2 dimensions (T, B, ...)")
    time_dim = 1 if batch_first else 0
    steps, batch = x.shape[time_dim], x.shape[1 - time_dim]
    lengths = _check_lengths(lengths, batch, steps).to(x.device)
    t = torch.arange(steps, device=x.device).unsqueeze(1)  # (T, 1)
    source = torch.where(t < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - t, t)  # (T, B)
    if batch_first:
        source = source.transpose(0, 1)
    index = source.reshape(source.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return torch.gather(x, time_dim, index)


def _from_nn_lstm(lstm: nn.LSTM) -> LSTM:
    ref = lstm.weight_ih_l0
    new = LSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
               batch_first=lstm.batch_first, dropout=lstm.dropout, bidirectional=lstm.bidirectional,
               proj_size=lstm.proj_size, device=ref.device, dtype=ref.dtype)
    new.load_state_dict(lstm.state_dict())
    new.train(lstm.training)
    return new


def _is_torch_lstm(module: nn.Module) -> bool:
    # detlstm.LSTM is an nn.LSTM subclass too: converting it again would be a no-op copy.
    return isinstance(module, nn.LSTM) and not isinstance(module, LSTM)


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch.nn.LSTM inside model (or model itself) with a detlstm.LSTM holding the
    same weights, device, dtype and training mode; detlstm modules are left as they are. Returns
    the model (or the new LSTM)."""
    if _is_torch_lstm(model):
        return _from_nn_lstm(model)
    for name, child in list(model.named_children()):
        if _is_torch_lstm(child):
            setattr(model, name, _from_nn_lstm(child))
        else:
            convert(child)
    return model
