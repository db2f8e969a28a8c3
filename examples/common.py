"""Helpers shared by the examples: choosing the LSTM implementation, hashing, logging, plotting."""

import hashlib
import json
import os

import torch
from torch import nn

import detlstm

LSTM_KINDS = ("detlstm", "torch")


def make_lstm(kind, *args, **kwargs):
    """detlstm.LSTM or torch.nn.LSTM with the same arguments (and so the same initial weights)."""
    if kind == "detlstm":
        return detlstm.LSTM(*args, **kwargs)
    if kind == "torch":
        return nn.LSTM(*args, **kwargs)
    raise ValueError(f"--lstm must be one of {LSTM_KINDS}, got {kind!r}")


def run_lstm(lstm, x, lengths, hx=None):
    """Padded batch-first x with per-sequence lengths through either implementation. detlstm takes
    lengths= directly; nn.LSTM needs packing (and gives the same h_n semantics that way)."""
    if isinstance(lstm, detlstm.LSTM):
        return lstm(x, hx, lengths=lengths)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, state = lstm(packed, hx)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def param_hash(model):
    d = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        d.update(name.encode())
        d.update(p.detach().cpu().contiguous().numpy().tobytes())
    return d.hexdigest()


def device_of(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    return torch.device(name)


def progress(iterable, total, desc, enabled=True):
    try:
        from tqdm import tqdm
    except ImportError:  # the examples still run without tqdm, just without a bar
        return iterable
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


def save_json(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def plot_lines(path, series, title, xlabel, ylabel, logy=False):
    """series: {label: [y0, y1, ...]} or {label: ([x...], [y...])}. Returns path or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    for k, (label, ys) in enumerate(series.items()):
        xs, ys = ys if isinstance(ys, tuple) else (range(len(ys)), ys)
        ax.plot(list(xs), list(ys), styles[k % len(styles)], label=label, linewidth=1.4)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
