"""ONNX export of detlstm.LSTM: one ONNX LSTM node per layer, for inference.

LSTM.forward hands over to export_forward while torch.onnx.export traces the model (in_onnx_export()),
so the plain `torch.onnx.export(model, args, f, dynamic_shapes=...)` (or dynamic_axes=) of a model
holding detlstm.LSTM works with no detlstm-specific argument, with either exporter. Each layer becomes
a standard ONNX LSTM node: emitted with torch.onnx.ops.symbolic_multi_out, which the default
(torch.export-based) exporter writes as it stands, or, under the TorchScript exporter
(dynamo=False, which traces with torch.jit), by an autograd.Function whose symbolic() writes the
node, as torch's own LSTM symbolic does for nn.LSTM; everything around the nodes (the gate reorder
i,f,g,o -> i,o,f,c, the input forms, the padding mask, packing) is ordinary torch operations that the
exporter translates. The
per-sequence lengths (lengths= or a PackedSequence's) become the nodes' sequence_lens: a reverse
direction starts at each sequence's own last step and h_n, c_n are each sequence's state at its own
end, as with detlstm's operator; output rows past a sequence's length are 0. Batch, time (and packed
row) axes stay dynamic. Half-precision modules compute in float32 inside and round once, as detlstm.

The graph runs on the ONNX runtime's arithmetic, not detlstm's: results agree with detlstm to float32
rounding (tests/test_onnx.py holds them within 1e-5 in onnxruntime), not bit for bit.

Refused, with an error naming the feature: proj_size > 0 (the ONNX LSTM operator has no projection of
the hidden state); dropout between layers in training mode (detlstm's seeded masks have no ONNX
equivalent, and an exported model is for inference: call model.eval()). The TorchScript exporter
traces in eval mode unless given training=TrainingMode.TRAINING, as it does for nn.LSTM.

A model that packs inside (pack_padded_sequence ... pad_packed_sequence) exports with the TorchScript
exporter, as with nn.LSTM (see _TorchScriptPackedStack), but not with the default one, which has no
translation for aten._pack_padded_sequence, for nn.LSTM as for detlstm: pass lengths= instead. The
exporter drops the packing pair, with it pad_packed_sequence's padding_value (padding rows are 0) and
its trimming to max(lengths) (T rows come out unless total_length= is T): the same as with nn.LSTM.
Not handled here: an ExportedProgram captured by torch.export.export beforehand (it holds detlstm's
operator). A PackedSequence given to the LSTM is exported; a model taking one as an argument must take its
tensors (torch.export cannot give a PackedSequence argument dynamic shapes). onnxruntime's CPU LSTM
has no float64 kernel: a float64 model exports to a valid graph that onnxruntime cannot run.
"""

import torch
from torch.nn.utils.rnn import PackedSequence

# detlstm.module imports this module for its forward's hook: the module, not its names, so that either
# may be imported first.
from . import module as _module

# ONNX's gate blocks are i, o, f, c; PyTorch's (and detlstm's) are i, f, g, o.
_ONNX_GATE_ORDER = (0, 3, 1, 2)


def in_onnx_export() -> bool:
    """True while torch.onnx.export traces a model, in either of its captures: LSTM.forward's hook.

    torch.onnx.is_in_onnx_export() is right for the non-strict capture the exporter tries first, but
    Dynamo, which runs the strict capture it falls back to when that one fails, folds it to False:
    that capture would then record detlstm's operator and fail translating it, and its error would
    replace the first one (this module's refusals among them). The exporter's own flag (private, so
    read defensively) is seen under Dynamo too; there the export path stops at symbolic_multi_out,
    which Dynamo does not trace, and the exporter reports the first capture's error."""
    if torch.onnx.is_in_onnx_export():
        return True
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:
        return False
    return bool(getattr(_flags, "_is_onnx_exporting", False))


def export_forward(module, input, hx, lengths):
    """What LSTM.forward returns (output in the caller's form, (h_n, c_n)), as ONNX LSTM nodes."""
    _check_exportable(module)
    if isinstance(input, PackedSequence):
        return _packed_forward(module, input, hx, lengths)
    # The module's own checks and normalisation (while tracing, lengths are checked for shape only:
    # their values are an input of the exported graph).
    x, seq_lengths, (h0, c0), form = module._canonical_inputs(input, hx, lengths, module._weights())
    seq_lens = None if lengths is None else seq_lengths.to(device=x.device, dtype=torch.int32)
    output, h_n, c_n = _run_stack(module, x, seq_lens, h0, c0)
    if seq_lens is not None:  # padding rows are 0, whatever the runtime leaves there
        valid = torch.arange(x.shape[0], device=x.device).unsqueeze(1) < seq_lens.unsqueeze(0)
        output = torch.where(valid.unsqueeze(2), output, torch.zeros((), dtype=output.dtype))
    return _module._restore_form(form, output, h_n, c_n)


def _check_exportable(module) -> None:
    """Refuse, naming it, what an ONNX LSTM node cannot compute, and the exporter that cannot emit one."""
    if module.proj_size > 0:
        raise NotImplementedError(
            f"detlstm.LSTM ONNX export: proj_size={module.proj_size} cannot be exported (the ONNX LSTM "
            "operator has no projection of the hidden state); export a model with proj_size=0")
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise NotImplementedError(
            f"detlstm.LSTM ONNX export: dropout={module.dropout} between layers in training mode cannot "
            "be exported (detlstm's seeded dropout masks have no ONNX equivalent; export is for "
            "inference): call model.eval() before torch.onnx.export")


def _layer_weights(module, layer, dtype):
    """One layer's ONNX LSTM inputs W (D, 4H, I), R (D, 4H, H) and B (D, 8H) (None without biases),
    directions stacked forward first and gate blocks in ONNX's order."""
    suffixes = ("", "_reverse") if module.bidirectional else ("",)
    hidden = module.hidden_size

    def onnx_order(kind):  # slices, not a split: the exporter's optimiser folds single-output nodes
        stacked = torch.stack([getattr(module, f"{kind}_l{layer}{s}") for s in suffixes]).to(dtype)
        return torch.cat([stacked.narrow(1, g * hidden, hidden) for g in _ONNX_GATE_ORDER], 1)

    bias = torch.cat([onnx_order("bias_ih"), onnx_order("bias_hh")], 1) if module.bias else None
    return onnx_order("weight_ih"), onnx_order("weight_hh"), bias


def _run_stack(module, x, seq_lens, h0, c0):
    """The layers as ONNX LSTM nodes on time-major x: (output (T, B, D * H), h_n, c_n)."""
    result_dtype = x.dtype if x.dtype in _module._WIDENED_DTYPES else None
    dtype = torch.float32 if result_dtype is not None else x.dtype  # half: float32 inside, as the kernels
    x, h0, c0 = x.to(dtype), h0.to(dtype), c0.to(dtype)
    directions = 2 if module.bidirectional else 1
    steps, batch, hidden = x.shape[0], x.shape[1], module.hidden_size
    h_n, c_n = [], []
    for layer in range(module.num_layers):
        w, r, b = _layer_weights(module, layer, dtype)
        states = slice(layer * directions, (layer + 1) * directions)
        y, y_h, y_c = _lstm_node(x, w, r, b, seq_lens, h0[states], c0[states], hidden, directions)
        x = y.permute(0, 2, 1, 3).reshape(steps, batch, directions * hidden)
        h_n.append(y_h)
        c_n.append(y_c)
    output, h_n, c_n = x, torch.cat(h_n, 0), torch.cat(c_n, 0)
    if result_dtype is not None:
        output, h_n, c_n = output.to(result_dtype), h_n.to(result_dtype), c_n.to(result_dtype)
    return output, h_n, c_n


def _lstm_node(x, w, r, b, seq_lens, h0, c0, hidden, directions):
    """One ONNX LSTM node (Y (T, D, B, H), Y_h, Y_c), recorded for the exporter that is tracing: the
    default one reads symbolic_multi_out; the TorchScript one (dynamo=False), which traces with
    torch.jit and has no translation for that operator, calls _TorchScriptLstmNode's symbolic."""
    if torch.jit.is_tracing():
        return _TorchScriptLstmNode.apply(x, w, r, b, seq_lens, h0, c0, hidden, directions)
    steps, batch = x.shape[0], x.shape[1]
    return torch.onnx.ops.symbolic_multi_out(
        "LSTM", [x, w, r, b, seq_lens, h0, c0],
        {"hidden_size": hidden, "direction": _DIRECTIONS[directions]},
        dtypes=(x.dtype,) * 3,
        shapes=((steps, directions, batch, hidden), (directions, batch, hidden), (directions, batch, hidden)),
    )


_DIRECTIONS = {1: "forward", 2: "bidirectional"}


class _TorchScriptLstmNode(torch.autograd.Function):
    """An ONNX LSTM node for the TorchScript exporter, which replaces an autograd.Function by what its
    symbolic() emits. forward() only stands in for the node while the exporter traces (as
    symbolic_multi_out does for the default exporter): tensors of zeros in the node's output shapes,
    which the graph never holds. Outside an export nothing calls it."""

    @staticmethod
    def forward(ctx, x, w, r, b, seq_lens, h0, c0, hidden, directions):
        steps, batch = x.shape[0], x.shape[1]
        state = x.new_zeros(directions, batch, hidden)
        return x.new_zeros(steps, directions, batch, hidden), state, state.clone()

    @staticmethod
    def symbolic(g, x, w, r, b, seq_lens, h0, c0, hidden, directions):
        return _lstm_op(g, x, w, r, b, seq_lens, h0, c0, hidden, directions)


def _packed_forward(module, packed, hx, lengths):
    """A PackedSequence input: run in its sorted order (the nodes need no sorting: each sequence has its
    sequence_lens), the states permuted as nn.LSTM does, the output packed like the input."""
    if lengths is not None:
        raise ValueError("lengths= is for padded tensors; a PackedSequence carries its own lengths")
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    if data.dim() != 2:
        raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
    if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise ValueError("hx must be a tuple (h_0, c_0) of two tensors")
    module._check_input_tensor(data, module._weights())
    if _packed_by_torchscript_exporter(batch_sizes):
        return _torchscript_packing_forward(module, packed, hx)
    batch = _packed_batch(batch_sizes, sorted_indices, hx)
    x, seq_lens, starts = _packed_to_padded(data, batch_sizes, batch)
    h0, c0 = module._initial_state(hx, x, _module._CallerForm(packed, None, batched=True, batch_first=False))
    if sorted_indices is not None and hx is not None:
        h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
    output, h_n, c_n = _run_stack(module, x, seq_lens, h0, c0)
    if unsorted_indices is not None:
        h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
    rows = _packed_rows(starts, data.shape[0], x.shape[1])
    flat = output.reshape(output.shape[0] * output.shape[1], output.shape[2])
    return PackedSequence(flat[rows], batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)


def _packed_batch(batch_sizes, sorted_indices, hx):
    """The number of sequences, from a shape where there is one (sorted_indices, else a 3-D h_0): only a
    sorted PackedSequence without hx leaves batch_sizes[0], a value of the graph's input, to read (an
    int for torch.export, which records the read; a tensor for the jit tracer, which would not)."""
    if sorted_indices is not None:
        return sorted_indices.shape[0]
    if hx is not None and hx[0].dim() == 3:
        return hx[0].shape[1]
    if torch.jit.is_tracing():  # the TorchScript exporter: .item() would record this input's value
        return batch_sizes[0]
    batch = batch_sizes[0].item()
    torch._check(batch >= 1)
    return batch


def _packed_to_padded(data, batch_sizes, batch):
    """Packed data as time-major padded (T, B, F) in sorted order, with int32 lengths and each step's
    first packed row: gathers whose sizes come from the inputs' shapes."""
    batch_sizes = batch_sizes.to(device=data.device, dtype=torch.int64)
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes
    positions = torch.arange(batch, device=data.device)
    valid = positions.unsqueeze(0) < batch_sizes.unsqueeze(1)  # (T, B): step t of sorted sequence b
    rows = (starts.unsqueeze(1) + positions.unsqueeze(0)).clamp(max=data.shape[0] - 1)
    seq_lens = valid.sum(0, dtype=torch.int32)
    return data[rows], seq_lens, starts


def _packed_rows(starts, rows, batch):
    """For each packed row r (step t, sorted position i), its padded slot t * B + i. The step of each
    row is a running count of the steps begun by then (a scatter and a cumsum: O(rows + steps))."""
    begins = torch.zeros(rows, dtype=torch.int64, device=starts.device)
    begins = begins.scatter_add(0, starts[1:], torch.ones_like(starts[1:]))
    step = torch.cumsum(begins, 0)
    row = torch.arange(rows, device=starts.device)
    return step * batch + (row - starts[step])


# A model that packs inside (pack_padded_sequence ... pad_packed_sequence) under the TorchScript exporter.
# Its translation of pack_padded_sequence is not a packing: a prim::PackPadded node whose "data" is the
# padded (T, B, F) input and whose "batch_sizes" are the int32 lengths, and which only exports when a
# later pass (torch/csrc/jit/passes/onnx/peephole.cpp, pushPackingPastRnn and removeNopPacking) can
# move it past the RNN nodes that read it to its pad_packed_sequence and drop the pair. That pass looks
# for what nn.LSTM's symbolic writes: the first layer's LSTM node the only reader of that data, the
# lengths the sequence_lens of every layer and read by nothing else, each layer's Y reshaped to
# (T, B, D * H) by Squeeze or Transpose + Reshape; it moves the packing past one RNN after another,
# so the data may also come from an RNN before (nn.LSTM, nn.GRU, another detlstm.LSTM) that read the
# same packing. _TorchScriptPackedStack writes the same, so such a model exports as it does with
# nn.LSTM; any other reader of data or batch_sizes (the gathers of the general packed path, a layer
# applied to packed.data) leaves the packing where it is, and the exporter refuses the model.


def _packed_by_torchscript_exporter(batch_sizes) -> bool:
    """True when the jit tracer (the TorchScript exporter's) has batch_sizes from pack_padded_sequence:
    the PackedSequence is that packing's, directly or through the RNNs before this one."""
    if not torch.jit.is_tracing():
        return False
    traced = torch._C._get_value_trace(batch_sizes)
    return traced is not None and traced.node().kind() == "aten::_pack_padded_sequence"


def _torchscript_packing_forward(module, packed, hx):
    """LSTM.forward's result for a PackedSequence from pack_padded_sequence, under the TorchScript
    exporter: the whole stack one _TorchScriptPackedStack node (see above); h_n and c_n in the caller's
    order, as nn.LSTM gives them."""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    if data.dtype in _module._WIDENED_DTYPES:
        raise NotImplementedError(
            f"detlstm.LSTM ONNX export: a {data.dtype} model that packs its input "
            "(pack_padded_sequence) cannot be exported by the TorchScript exporter (dynamo=False): its "
            "LSTM nodes would compute in float32 and the exporter needs them to read the packed input "
            "as it is; export in float32, or with the default exporter passing lengths=")
    states = []
    if hx is not None:
        h0, c0 = module._initial_state(hx, data.unsqueeze(1), _module._CallerForm(packed, None, batched=True,
                                                                                 batch_first=False))
        if sorted_indices is not None:
            h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        states = [h0, c0]
    weights = [t for layer in range(module.num_layers) for t in _layer_weights(module, layer, data.dtype)
               if t is not None]
    output, h_n, c_n = _TorchScriptPackedStack.apply(
        data, batch_sizes, module.num_layers, module.hidden_size, 2 if module.bidirectional else 1,
        module.bias, len(states) > 0, *states, *weights)
    if unsorted_indices is not None:
        h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
    return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)


class _TorchScriptPackedStack(torch.autograd.Function):
    """Every layer over pack_padded_sequence's data, for the TorchScript exporter (see above). forward()
    stands in for the nodes while the exporter traces: zeros in the packed output's and the states'
    shapes, which the graph never holds."""

    @staticmethod
    def forward(ctx, data, batch_sizes, layers, hidden, directions, has_bias, has_state, *tensors):
        batch = int(batch_sizes[0])
        state = data.new_zeros(layers * directions, batch, hidden)
        return data.new_zeros(data.shape[0], directions * hidden), state, state.clone()

    @staticmethod
    def symbolic(g, data, batch_sizes, layers, hidden, directions, has_bias, has_state, *tensors):
        states, weights = (tensors[:2], tensors[2:]) if has_state else (None, tensors)
        per_layer = 3 if has_bias else 2
        x, y_h, y_c = data, [], []
        for layer in range(layers):
            w, r, *b = weights[layer * per_layer:(layer + 1) * per_layer]
            initial = (None, None) if states is None else [
                _rows(g, state, layer * directions, directions) for state in states]
            y, h, c = _lstm_op(g, x, w, r, b[0] if b else None, batch_sizes, *initial, hidden, directions)
            x = _layer_output(g, y, directions)
            y_h.append(h)
            y_c.append(c)
        concat = (lambda parts: parts[0]) if layers == 1 else (lambda parts: g.op("Concat", *parts, axis_i=0))
        return x, concat(y_h), concat(y_c)


def _lstm_op(g, x, w, r, b, seq_lens, h0, c0, hidden, directions):
    """An ONNX LSTM node in a TorchScript exporter graph: (Y, Y_h, Y_c); inputs given as None are left
    out, as the exporter's own symbolics leave them."""
    def given(value):
        if value is not None:
            return value
        node = g.op("prim::Constant")
        node.setType(torch._C.OptionalType.ofTensor())
        return node

    return g.op("LSTM", x, w, r, given(b), given(seq_lens), given(h0), given(c0), hidden_size_i=hidden,
                direction_s=_DIRECTIONS[directions], outputs=3)


def _ints(g, values):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _rows(g, state, start, count):
    """state[start:start + count] along the first axis (bounds as inputs from opset 10, attributes before)."""
    if g.opset < 10:
        return g.op("Slice", state, axes_i=[0], starts_i=[start], ends_i=[start + count])
    return g.op("Slice", state, _ints(g, [start]), _ints(g, [start + count]), _ints(g, [0]))


def _layer_output(g, y, directions):
    """Y (T, D, B, H) as the next layer's (T, B, D * H): the two shapes the exporter's pass accepts."""
    if directions == 1:  # (axes an input from opset 13, an attribute before)
        return g.op("Squeeze", y, axes_i=[1]) if g.opset < 13 else g.op("Squeeze", y, _ints(g, [1]))
    y = g.op("Transpose", y, perm_i=[0, 2, 1, 3])
    return g.op("Reshape", y, _ints(g, [0, 0, -1]))
