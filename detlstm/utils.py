"""Helpers around the module: converting nn.LSTM models, reversing padded sequences."""

import torch
from torch import nn

from .module import _SUPPORTED_DTYPES, LSTM, _check_lengths


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


def _is_torch_lstm(module: nn.Module) -> bool:
    # detlstm.LSTM is an nn.LSTM subclass too: converting it again would change nothing.
    return isinstance(module, nn.LSTM) and not isinstance(module, LSTM)


def _check_convertible(name: str, lstm: nn.LSTM) -> None:
    """What convert cannot turn into a detlstm.LSTM without losing something, refused before any
    module is changed: a subclass of nn.LSTM (its own forward or attributes, or the class that
    torch.nn.utils.parametrize makes) and a dtype detlstm has no kernels for."""
    where = (f"detlstm.convert: the module at '{name}'" if name else "detlstm.convert: the model") + \
        f" ({type(lstm).__module__}.{type(lstm).__qualname__})"
    if type(lstm) is not nn.LSTM:
        raise TypeError(
            f"{where} is a subclass of nn.LSTM, whose own behaviour a detlstm.LSTM would drop. For a "
            "parametrized LSTM, build a detlstm.LSTM, load the weights and register the "
            "parametrization on it (torch.nn.utils.parametrize works on detlstm.LSTM)")
    dtypes = {w.dtype for w in lstm._flat_weights if w is not None}
    unsupported = dtypes - set(_SUPPORTED_DTYPES)
    if unsupported:
        raise ValueError(f"{where} has weights of dtype {sorted(map(str, unsupported))}; detlstm.LSTM "
                         "supports float32, float64, float16 and bfloat16")


def _become_detlstm(lstm: nn.LSTM) -> None:
    """Makes this nn.LSTM object a detlstm.LSTM in place: the same object, so every reference to it
    (a shared instance, an alias attribute) sees the change, with the same Parameter objects (an
    optimizer or DDP built before keeps working; requires_grad, .grad and their hooks stay), the
    same module hooks, buffers and attributes. detlstm.LSTM reads its weights by name and keeps
    no flat weight cache, so nn.RNNBase's is dropped."""
    lstm.__class__ = LSTM
    for stale in ("_flat_weights", "_flat_weight_refs"):
        lstm.__dict__.pop(stale, None)


def convert(model: nn.Module) -> nn.Module:
    """Turns every torch.nn.LSTM inside model (or model itself) into a detlstm.LSTM, in place: the
    same module objects, parameters, hooks, device, dtype and training mode; detlstm modules are
    left as they are. Subclasses of nn.LSTM (parametrized ones among them) are refused with an
    error before anything changes. Returns model."""
    found = [(name, m) for name, m in model.named_modules() if _is_torch_lstm(m)]
    for name, lstm in found:
        _check_convertible(name, lstm)
    for _, lstm in found:
        _become_detlstm(lstm)
    return model
