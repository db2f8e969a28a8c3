"""ONNX export of detlstm.LSTM (detlstm/onnx.py), run with onnxruntime on the CPU.

Each configuration is exported once, by the plain `torch.onnx.export(model, (), path, kwargs=...,
dynamic_shapes=...)` (one by `torch.onnx.export(model, args, path, input_names=..., dynamic_axes=...)`)
with the default, torch.export-based exporter and no detlstm-specific argument, its batch, time (and
packed-row) axes dynamic. That one model then runs in onnxruntime at several batch sizes and lengths,
and its output, h_n and c_n must lie within 1e-5 of detlstm's own results on the same inputs: padded
(time-major, batch_first, unbatched), padded + lengths=, PackedSequence (sorted and unsorted), with
and without (h0, c0). The graph must hold one ONNX LSTM node per layer, with sequence_lens exactly
where the input has lengths. What ONNX cannot express must be refused with an error that names it,
and that error must be the one the exporter reports (also after its fallback to a strict, Dynamo
capture). onnx, onnxscript and onnxruntime are optional: without them this file is skipped.
"""

from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import detlstm  # noqa: E402  (after the optional imports, so a missing extra skips before the build loads)

TOLERANCE = 1e-5
FEATURES, HIDDEN = 3, 5
EXAMPLE = (6, 2)  # (T, B) of the example inputs the export traces
SIZES = ((1, 1), (4, 3), (9, 5), (6, 2))  # (T, B) each exported model then runs at


class PaddedModel(nn.Module):
    """A model holding detlstm.LSTM and passing it padded input, lengths= and (h0, c0) when given."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, lengths=None, h0=None, c0=None):
        out, (h_n, c_n) = self.lstm(x, None if h0 is None else (h0, c0), lengths=lengths)
        return out, h_n, c_n


class PackedModel(nn.Module):
    """The same with a PackedSequence (given as its tensors: a PackedSequence argument cannot carry
    dynamic_shapes through torch.export's pytree), returning the packed output's data."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, data, batch_sizes, sorted_indices=None, unsorted_indices=None, h0=None, c0=None):
        packed = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        out, (h_n, c_n) = self.lstm(packed, None if h0 is None else (h0, c0))
        return out.data, h_n, c_n


class Case(NamedTuple):
    form: str  # padded, unbatched, lengths, packed (unsorted, with indices) or packed_sorted
    config: dict  # detlstm.LSTM keyword arguments
    state: bool  # pass (h0, c0)
    training: bool = False
    tolerance: float = TOLERANCE
    dynamic_axes: bool = False  # export with the older dynamic_axes= and input_names= instead


CASES = {
    "padded-1layer-batch_first-hx": Case("padded", dict(batch_first=True), True),
    "padded-2layer-bi-nobias-dynamic_axes": Case("padded", dict(num_layers=2, bidirectional=True, bias=False),
                                                  False, dynamic_axes=True),
    "unbatched-2layer-bi-hx": Case("unbatched", dict(num_layers=2, bidirectional=True), True),
    "lengths-2layer-bi-dropout-eval-hx": Case("lengths", dict(num_layers=2, bidirectional=True, dropout=0.25), True),
    # Training mode without dropout computes what eval mode does: it exports.
    "lengths-1layer-bi-batch_first-train": Case("lengths", dict(bidirectional=True, batch_first=True), False, True),
    "packed-2layer-bi-hx": Case("packed", dict(num_layers=2, bidirectional=True), True),
    # A sorted PackedSequence has no indices: the batch size comes from h0's shape, else from batch_sizes[0].
    "packed_sorted-2layer": Case("packed_sorted", dict(num_layers=2), False),
    "packed_sorted-1layer-bi-hx": Case("packed_sorted", dict(bidirectional=True), True),
    # Computed in float32 inside and rounded once, as detlstm does: equal up to one float16 rounding.
    "padded-bi-float16": Case("padded", dict(bidirectional=True, dtype=torch.float16), False, tolerance=1e-3),
}


def _inputs(case: Case, steps: int, batch: int, generator):
    """The model's keyword inputs for one (T, B), lengths in [1, T] in no particular order."""
    config = case.config
    dtype = config.get("dtype", torch.float32)
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    x = torch.randn(steps, batch, FEATURES, generator=generator).to(dtype)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    inputs = {}
    if case.form in ("packed", "packed_sorted"):
        lengths[torch.randint(0, batch, (), generator=generator)] = steps  # the padded length is T
        if case.form == "packed_sorted":
            lengths = lengths.sort(descending=True).values
        packed = pack_padded_sequence(x, lengths, enforce_sorted=case.form == "packed_sorted")
        inputs.update(data=packed.data, batch_sizes=packed.batch_sizes)
        if case.form == "packed":
            inputs.update(sorted_indices=packed.sorted_indices, unsorted_indices=packed.unsorted_indices)
    elif case.form == "unbatched":
        inputs["x"] = x[:, 0]
    else:
        inputs["x"] = x.transpose(0, 1) if config.get("batch_first") else x
        if case.form == "lengths":
            inputs["lengths"] = lengths
    if case.state:
        shape = (layers, HIDDEN) if case.form == "unbatched" else (layers, batch, HIDDEN)
        inputs.update(h0=torch.randn(shape, generator=generator).to(dtype),
                      c0=torch.randn(shape, generator=generator).to(dtype))
    return inputs


def _dynamic_shapes(case: Case, inputs):
    """Every batch, time and packed-row axis dynamic."""
    batch_first = case.config.get("batch_first", False)
    axes = {"x": {0: "T"} if case.form == "unbatched" else ({0: "B", 1: "T"} if batch_first else {0: "T", 1: "B"}),
            "lengths": {0: "B"}, "data": {0: "N"}, "batch_sizes": {0: "T"}, "sorted_indices": {0: "B"},
            "unsorted_indices": {0: "B"}}
    state = None if case.form == "unbatched" else {1: "B"}
    axes.update(h0=state, c0=state)
    return {name: axes[name] for name in inputs}


def _export(case: Case, path):
    torch.manual_seed(0)
    lstm = detlstm.LSTM(FEATURES, HIDDEN, **case.config)
    model = (PackedModel if case.form.startswith("packed") else PaddedModel)(lstm).train(case.training)
    inputs = _inputs(case, *EXAMPLE, torch.Generator().manual_seed(1))
    axes = _dynamic_shapes(case, inputs)
    if case.dynamic_axes:  # positional inputs, in forward's order
        torch.onnx.export(model, tuple(inputs.values()), path, input_names=list(inputs),
                          dynamic_axes={name: spec for name, spec in axes.items() if spec})
    else:
        torch.onnx.export(model, (), path, kwargs=inputs, dynamic_shapes=axes)
    return model


def _check_graph(case: Case, path) -> None:
    """One ONNX LSTM node per layer, nothing outside the standard domain, sequence_lens where the
    input has lengths (lengths= or packed) and nowhere else."""
    graph = onnx.load(str(path)).graph
    assert all(node.domain in ("", "ai.onnx") for node in graph.node), {n.domain for n in graph.node}
    lstms = [node for node in graph.node if node.op_type == "LSTM"]
    assert len(lstms) == case.config.get("num_layers", 1)
    with_lengths = case.form in ("lengths", "packed", "packed_sorted")
    for node in lstms:
        assert (len(node.input) > 4 and node.input[4] != "") == with_lengths, list(node.input)


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_matches_detlstm(name, tmp_path):
    """One exported model, run by onnxruntime at every size in SIZES, against detlstm eagerly."""
    case = CASES[name]
    path = tmp_path / "model.onnx"
    model = _export(case, path)
    _check_graph(case, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected_names = {i.name for i in session.get_inputs()}
    generator = torch.Generator().manual_seed(2)
    for steps, batch in SIZES:
        inputs = _inputs(case, steps, batch, generator)
        assert set(inputs) == expected_names
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model(**inputs)
        for what, g, e in zip(("output", "h_n", "c_n"), got, expected):
            assert tuple(g.shape) == tuple(e.shape), f"{what} at T={steps}, B={batch}"
            diff = (torch.from_numpy(g).double() - e.double()).abs().max().item()
            assert diff <= case.tolerance, f"{what} at T={steps}, B={batch}: max abs diff {diff:.3e}"


def _cause_chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize("config, training, named", [
    (dict(proj_size=2), False, "proj_size=2"),
    (dict(num_layers=2, dropout=0.5), True, "dropout=0.5"),
])
def test_unexpressible_refused(config, training, named, tmp_path):
    """proj_size > 0 (no projection in ONNX's LSTM) and dropout between layers in training mode
    (detlstm's seeded masks) are refused by an error that names them, and the exporter's own error
    repeats it."""
    model = PaddedModel(detlstm.LSTM(FEATURES, HIDDEN, **config)).train(training)
    with pytest.raises(Exception) as info:
        torch.onnx.export(model, (torch.randn(*EXAMPLE, FEATURES),), tmp_path / "model.onnx")
    ours = [e for e in _cause_chain(info.value) if isinstance(e, NotImplementedError)]
    assert ours and named in str(ours[0]) and "detlstm.LSTM ONNX export" in str(ours[0])
    assert named in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_exporter_refused(tmp_path):
    model = PaddedModel(detlstm.LSTM(FEATURES, HIDDEN)).eval()
    with pytest.raises(NotImplementedError, match=r"dynamo=True"):
        torch.onnx.export(model, (torch.randn(*EXAMPLE, FEATURES),), tmp_path / "model.onnx", dynamo=False)
