"""The implementations the bench compares, each built from one set of weights so they do the same
work: detlstm, torch.nn.LSTM (CPU native or cuDNN in three settings) and the two-one-way-LSTMs
workaround people use today for a reproducible bidirectional LSTM."""

import contextlib
import os

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import detlstm


class Competitor:
    """name; build(spec, device, dtype) -> model; run(model, x, lengths) -> (output, h_n, c_n)."""

    name = ""
    note = ""

    def available(self, device):
        return True

    def context(self):
        return contextlib.nullcontext()


class DetLSTM(Competitor):
    name = "detlstm"

    def available(self, device):
        return device == "cpu" or detlstm.HAS_CUDA_KERNELS

    def build(self, spec, device, dtype):
        return detlstm.LSTM(spec.input, spec.hidden, num_layers=spec.layers, dropout=spec.dropout,
                            bidirectional=spec.bidirectional, device=device, dtype=dtype)

    def run(self, model, x, lengths):
        out, (h, c) = model(x, lengths=lengths)
        return out, h, c


class _Settings:
    """torch switches set for the duration of one competitor's measurements."""

    def __init__(self, tf32=None, deterministic=False):
        self.tf32, self.deterministic = tf32, deterministic

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                      torch.are_deterministic_algorithms_enabled())
        if self.tf32 is not None:
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        if self.deterministic:
            torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc):
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, det) = self.saved
        torch.use_deterministic_algorithms(det)


class TorchLSTM(Competitor):
    """nn.LSTM on a PackedSequence (what variable lengths need), packing and unpacking timed too."""

    def __init__(self, name, note, tf32=None, deterministic=False, devices=("cpu", "cuda")):
        self.name, self.note, self.devices = name, note, devices
        self.settings = dict(tf32=tf32, deterministic=deterministic)

    def available(self, device):
        return device in self.devices

    def context(self):
        return _Settings(**self.settings)

    def build(self, spec, device, dtype):
        return nn.LSTM(spec.input, spec.hidden, num_layers=spec.layers, dropout=spec.dropout,
                       bidirectional=spec.bidirectional, device=device, dtype=dtype)

    def run(self, model, x, lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = model(packed)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, h, c


class TwoOneWay(nn.Module):
    """The workaround: a forward nn.LSTM stack on x and a second on each sequence reversed within its
    length, its output reversed back, the two concatenated. With more than one layer this is a
    different model from a bidirectional LSTM: each stack's upper layers see only one direction."""

    def __init__(self, spec, device, dtype):
        super().__init__()
        kw = dict(num_layers=spec.layers, dropout=spec.dropout, device=device, dtype=dtype)
        self.fwd = nn.LSTM(spec.input, spec.hidden, **kw)
        self.bwd = nn.LSTM(spec.input, spec.hidden, **kw) if spec.bidirectional else None


class TwoOneWayCompetitor(Competitor):
    name = "two-one-way"
    note = "nn.LSTM forward + nn.LSTM on reverse_padded input; a different model past one layer"

    def build(self, spec, device, dtype):
        return TwoOneWay(spec, device, dtype)

    def _one(self, lstm, x, lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        return out, h, c

    def run(self, model, x, lengths):
        out, h, c = self._one(model.fwd, x, lengths)
        if model.bwd is None:
            return out, h, c
        rev, hr, cr = self._one(model.bwd, detlstm.reverse_padded(x, lengths), lengths)
        out = torch.cat([out, detlstm.reverse_padded(rev, lengths)], -1)
        return out, torch.cat([h, hr]), torch.cat([c, cr])


def all_competitors(device):
    if device == "cuda":
        # cuBLAS reads this when its handle is created: set before the first CUDA call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    found = [
        DetLSTM(),
        TorchLSTM("nn.LSTM", "PyTorch's native CPU LSTM", devices=("cpu",)),
        TorchLSTM("cudnn", "cuDNN default (TF32 allowed)", tf32=True, devices=("cuda",)),
        TorchLSTM("cudnn-fp32", "cuDNN, allow_tf32=False", tf32=False, devices=("cuda",)),
        TorchLSTM("cudnn-det", "cuDNN under use_deterministic_algorithms(True), "
                  "CUBLAS_WORKSPACE_CONFIG=:4096:8", tf32=False, deterministic=True, devices=("cuda",)),
        TwoOneWayCompetitor(),
    ]
    return [c for c in found if c.available(device)]
