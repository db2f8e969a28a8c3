"""ONNX export of detlstm.LSTM (detlstm/onnx.py), run with onnxruntime on the CPU.

Each configuration is exported once per exporter, by the plain `torch.onnx.export(model, (), path,
kwargs=..., dynamic_shapes=...)` (one by `torch.onnx.export(model, args, path, input_names=...,
dynamic_axes=...)`) with the default, torch.export-based exporter, and by `torch.onnx.export(...,
input_names=..., dynamic_axes=..., dynamo=False)` with the TorchScript one; no detlstm-specific
argument, the batch, time (and packed-row) axes dynamic. That one model then runs in onnxruntime at several batch sizes and lengths,
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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

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


def _export(case: Case, path, exporter: str):
    torch.manual_seed(0)
    lstm = detlstm.LSTM(FEATURES, HIDDEN, **case.config)
    model = (PackedModel if case.form.startswith("packed") else PaddedModel)(lstm).train(case.training)
    inputs = _inputs(case, *EXAMPLE, torch.Generator().manual_seed(1))
    axes = _dynamic_shapes(case, inputs)
    if exporter == "torchscript":  # dynamic_axes is its only way to say which axes vary
        torch.onnx.export(model, (), path, kwargs=inputs, input_names=list(inputs),
                          dynamic_axes={name: spec for name, spec in axes.items() if spec}, dynamo=False)
    elif case.dynamic_axes:  # positional inputs, in forward's order
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


EXPORTERS = ("default", "torchscript")


def _assert_runtime_matches(path, model, inputs_at, tolerance=TOLERANCE) -> None:
    """The exported graph at path, run by onnxruntime at every (T, B) in SIZES on inputs_at(T, B)
    (which must be exactly the graph's inputs), gives model's output, h_n and c_n in their shapes,
    within tolerance."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected_names = {i.name for i in session.get_inputs()}
    for steps, batch in SIZES:
        inputs = inputs_at(steps, batch)
        assert set(inputs) == expected_names
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            expected = model(**inputs)
        for what, g, e in zip(("output", "h_n", "c_n"), got, expected):
            assert tuple(g.shape) == tuple(e.shape), f"{what} at T={steps}, B={batch}"
            diff = (torch.from_numpy(g).double() - e.double()).abs().max().item()
            assert diff <= tolerance, f"{what} at T={steps}, B={batch}: max abs diff {diff:.3e}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's own warning
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_matches_detlstm(name, exporter, tmp_path):
    """One exported model, run by onnxruntime at every size in SIZES, against detlstm eagerly."""
    case = CASES[name]
    path = tmp_path / "model.onnx"
    model = _export(case, path, exporter)
    _check_graph(case, path)
    generator = torch.Generator().manual_seed(2)
    _assert_runtime_matches(path, model, lambda t, b: _inputs(case, t, b, generator), case.tolerance)


def _cause_chain(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


# The TorchScript exporter puts the model in eval mode while it traces unless told to keep training
# mode (its deprecated training= argument); only then does dropout reach detlstm's refusal.
KEEP_TRAINING = dict(training=torch.onnx.TrainingMode.TRAINING, dynamo=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("config, training, named, export_options", [
    (dict(proj_size=2), False, "proj_size=2", {}),
    (dict(proj_size=2), False, "proj_size=2", dict(dynamo=False)),
    (dict(num_layers=2, dropout=0.5), True, "dropout=0.5", {}),
    (dict(num_layers=2, dropout=0.5), True, "dropout=0.5", KEEP_TRAINING),
], ids=["proj-default", "proj-torchscript", "dropout-default", "dropout-torchscript"])
def test_unexpressible_refused(config, training, named, export_options, tmp_path):
    """proj_size > 0 (no projection in ONNX's LSTM) and dropout between layers in training mode
    (detlstm's seeded masks) are refused by an error that names them, and the exporter's own error
    repeats it."""
    model = PaddedModel(detlstm.LSTM(FEATURES, HIDDEN, **config)).train(training)
    with pytest.raises(Exception) as info:
        torch.onnx.export(model, (torch.randn(*EXAMPLE, FEATURES),), tmp_path / "model.onnx", **export_options)
    ours = [e for e in _cause_chain(info.value) if isinstance(e, NotImplementedError)]
    assert ours and named in str(ours[0]) and "detlstm.LSTM ONNX export" in str(ours[0])
    assert named in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_exporter_traces_a_training_model_in_eval_mode(tmp_path):
    """As for nn.LSTM: with its defaults the TorchScript exporter exports a model left in training
    mode as in eval mode (no dropout), and gives the model back in training mode."""
    model = PaddedModel(detlstm.LSTM(FEATURES, HIDDEN, num_layers=2, dropout=0.5)).train()
    x = torch.randn(*EXAMPLE, FEATURES)
    torch.onnx.export(model, (x,), tmp_path / "model.onnx", input_names=["x"], dynamo=False)
    assert model.training
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x)
    for g, e in zip(got, expected):
        assert (torch.from_numpy(g) - e).abs().max().item() <= TOLERANCE


class PackingModel(nn.Module):
    """An older tagger's form: packs its padded input itself and pads the LSTM's output back."""

    def __init__(self, lstm, enforce_sorted):
        super().__init__()
        self.lstm, self.enforce_sorted = lstm, enforce_sorted

    def forward(self, x, lengths, h0=None, c0=None):
        packed = pack_padded_sequence(x, lengths, batch_first=self.lstm.batch_first,
                                      enforce_sorted=self.enforce_sorted)
        out, (h_n, c_n) = self.lstm(packed, None if h0 is None else (h0, c0))
        return pad_packed_sequence(out, batch_first=self.lstm.batch_first)[0], h_n, c_n


PACKING_CASES = {  # detlstm.LSTM keyword arguments, enforce_sorted, (h0, c0) given, opset (None: default)
    "1layer": (dict(), False, False, None),
    "2layer-bi-hx": (dict(num_layers=2, bidirectional=True), False, True, None),
    "2layer-batch_first-sorted-nobias": (dict(num_layers=2, batch_first=True, bias=False), True, False, None),
    "3layer-bi-batch_first-hx": (dict(num_layers=3, bidirectional=True, batch_first=True), False, True, None),
    "2layer-bi-hx-opset11": (dict(num_layers=2, bidirectional=True), False, True, 11),
    "1layer-bi-sorted-opset9": (dict(bidirectional=True), True, False, 9),
    # the states' slices as attributes (opset < 10) and Squeeze's axes as one (opset < 13)
    "2layer-bi-sorted-hx-opset9": (dict(num_layers=2, bidirectional=True), True, True, 9),
    "2layer-hx-opset11": (dict(num_layers=2), False, True, 11),
}


def _packing_inputs(config, enforce_sorted, state, steps, batch, generator):
    layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    x = torch.randn(steps, batch, FEATURES, generator=generator)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    inputs = dict(x=x.transpose(0, 1).contiguous() if config.get("batch_first") else x, lengths=lengths)
    if state:
        inputs.update(h0=torch.randn(layers, batch, HIDDEN, generator=generator),
                      c0=torch.randn(layers, batch, HIDDEN, generator=generator))
    return inputs


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", list(PACKING_CASES))
def test_torchscript_exporter_takes_a_model_that_packs_inside(name, tmp_path):
    """pack_padded_sequence -> detlstm.LSTM -> pad_packed_sequence inside the model exports with the
    TorchScript exporter, as it does with nn.LSTM (its pass must find the LSTM nodes it knows how to
    unpack, or the export fails): one LSTM node per layer reading the lengths, and onnxruntime within
    1e-5 of detlstm at every size in SIZES."""
    config, enforce_sorted, state, opset = PACKING_CASES[name]
    torch.manual_seed(0)
    model = PackingModel(detlstm.LSTM(FEATURES, HIDDEN, **config), enforce_sorted).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = _packing_inputs(config, enforce_sorted, state, *EXAMPLE, generator)
    batch_axis = 0 if config.get("batch_first") else 1
    axes = {"x": {batch_axis: "B", 1 - batch_axis: "T"}, "lengths": {0: "B"}, "h0": {1: "B"}, "c0": {1: "B"}}
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, tuple(inputs.values()), path, input_names=list(inputs),
                      dynamic_axes={k: axes[k] for k in inputs}, dynamo=False,
                      **({} if opset is None else dict(opset_version=opset)))
    _check_graph(Case("lengths", config, state), path)
    _assert_runtime_matches(
        path, model, lambda t, b: _packing_inputs(config, enforce_sorted, state, t, b, generator))


class PackedChainModel(nn.Module):
    """One packing read by two RNNs in a row, with dropout between (a no-op in eval mode), then by
    detlstm.LSTM: the form of a stacked encoder built from separate RNN modules."""

    def __init__(self, first):
        super().__init__()
        self.first = first
        self.second = detlstm.LSTM(first.hidden_size * (2 if first.bidirectional else 1), HIDDEN,
                                   bidirectional=True)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, _ = self.first(packed)
        out = PackedSequence(nn.functional.dropout(out.data, 0.3, self.training), out.batch_sizes,
                             out.sorted_indices, out.unsorted_indices)
        out, (h_n, c_n) = self.second(out)
        return pad_packed_sequence(out)[0], h_n, c_n


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("first", ["detlstm.LSTM", "nn.LSTM", "nn.GRU"])
def test_torchscript_exporter_takes_one_packing_read_by_rnns_in_a_row(first, tmp_path):
    """The exporter's pass moves the packing past one RNN after another, so detlstm.LSTM after
    another RNN of the same packing exports as nn.LSTM would there; onnxruntime within 1e-5."""
    torch.manual_seed(0)
    rnn = {"detlstm.LSTM": detlstm.LSTM, "nn.LSTM": nn.LSTM, "nn.GRU": nn.GRU}[first]
    model = PackedChainModel(rnn(FEATURES, HIDDEN, num_layers=2)).eval()
    generator = torch.Generator().manual_seed(3)
    inputs = _packing_inputs({}, False, False, *EXAMPLE, generator)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, tuple(inputs.values()), path, input_names=list(inputs),
                      dynamic_axes={"x": {0: "T", 1: "B"}, "lengths": {0: "B"}}, dynamo=False)
    _assert_runtime_matches(path, model, lambda t, b: _packing_inputs({}, False, False, t, b, generator))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_exporter_refuses_a_half_model_that_packs_inside(tmp_path):
    """Its LSTM nodes would have to compute in float16 on the packed input as it is (detlstm computes
    half precision in float32): refused, naming the dtype, not exported with other arithmetic."""
    model = PackingModel(detlstm.LSTM(FEATURES, HIDDEN, dtype=torch.float16), False).eval()
    x = torch.randn(*EXAMPLE, FEATURES, dtype=torch.float16)
    with pytest.raises(NotImplementedError, match=r"torch.float16 model that packs its input"):
        torch.onnx.export(model, (x, torch.tensor([6, 3])), tmp_path / "model.onnx", dynamo=False)


def test_torchscript_node_is_only_a_stand_in_outside_the_exporter():
    """The TorchScript exporter's node: its forward gives the node's shapes for the trace; the
    symbolic is what the graph holds (checked above). Nothing outside an export reaches it: a
    plain jit.trace of the model records detlstm's operator, not the stand-in."""
    model = PaddedModel(detlstm.LSTM(FEATURES, HIDDEN, bidirectional=True)).eval()
    x = torch.randn(*EXAMPLE, FEATURES)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "prim::PythonOp" not in kinds and any(kind.startswith("detlstm::") for kind in kinds), kinds
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
