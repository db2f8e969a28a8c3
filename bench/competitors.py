"""The implementations the bench compares, each built from one set of weights so they do the same
work: detlstm, torch.nn.LSTM (CPU native or cuDNN in three settings) and the two-one-way-LSTMs
workaround people use today for a reproducible bidirectional LSTM.

Each is called in the form a user would use: when every sequence is full length, lengths is None and
the model gets the dense padded tensor (nn.LSTM: no pack/unpack; detlstm: no lengths=); otherwise
nn.LSTM gets a PackedSequence and detlstm lengths=."""

import contextlib
import os
import sys
import tempfile

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import detlstm


class Competitor:
    """name; build(spec, device, dtype) -> model; run(model, x, lengths) -> (output, h_n, c_n), with
    lengths None for the dense form; input_form(lengths) names the form a row measured."""

    name = ""
    note = ""
    variable_form = "packed"  # what a call with lengths is named in the rows

    def input_form(self, lengths):
        return "dense" if lengths is None else self.variable_form

    def available(self, device):
        return True

    def context(self):
        return contextlib.nullcontext()


class DetLSTM(Competitor):
    name = "detlstm"
    variable_form = "lengths"

    def available(self, device):
        return device == "cpu" or detlstm.HAS_CUDA_KERNELS

    def build(self, spec, device, dtype):
        return detlstm.LSTM(spec.input, spec.hidden, num_layers=spec.layers, dropout=spec.dropout,
                            bidirectional=spec.bidirectional, device=device, dtype=dtype)

    def run(self, model, x, lengths):
        out, (h, c) = model(x) if lengths is None else model(x, lengths=lengths)
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
    """nn.LSTM on the dense tensor when every sequence is full length, else on a PackedSequence
    (what variable lengths need), packing and unpacking timed too."""

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
        return _lstm_call(model, x, lengths)


def _lstm_call(lstm, x, lengths):
    if lengths is None:
        out, (h, c) = lstm(x)
        return out, h, c
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h, c) = lstm(packed)
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

    def run(self, model, x, lengths):
        out, h, c = _lstm_call(model.fwd, x, lengths)
        if model.bwd is None:
            return out, h, c
        # full length: reversing each sequence within its length is flipping the time axis
        reverse = (lambda t: t.flip(0)) if lengths is None else \
            (lambda t: detlstm.reverse_padded(t, lengths))
        rev, hr, cr = _lstm_call(model.bwd, reverse(x), lengths)
        out = torch.cat([out, reverse(rev)], -1)
        return out, torch.cat([h, hr]), torch.cat([c, cr])


_PROFILER_NOISE = ("USDT:", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def _quiet_profiler_stderr():
    """The profiler's C++ side writes a few status lines straight to fd 2 on every start and stop;
    hold them back and pass on anything else."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines()
                    if ln and not any(n in ln for n in _PROFILER_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def lstm_path(step, x, lengths, device):
    """Which path nn.LSTM took in one call of `step` (outside any timed loop), from the op names
    under torch.profiler: oneDNN's fused LSTM (mkldnn_rnn_layer) or ATen's per-step path on the CPU,
    cuDNN on the GPU."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_profiler_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, lengths)
        if device == "cuda":
            torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    if device == "cuda":
        if any("cudnn_rnn" in n for n in names):
            return "cuDNN (algorithm not exposed by torch)"
        return "ATen"
    return "oneDNN" if any("mkldnn_rnn" in n for n in names) else "ATen"


def path_taken(competitor, step, x, lengths, device):
    """The path column: detlstm's own kernels by name, or what lstm_path saw nn.LSTM do."""
    if isinstance(competitor, DetLSTM):
        return "detlstm CUDA" if device == "cuda" else f"detlstm {detlstm.set_cpu_variant('')}"
    return lstm_path(step, x, lengths, device)


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
