"""ONNX export of detlstm.LSTM: one ONNX LSTM node per layer, for inference.

LSTM.forward hands over to export_forward while torch.onnx.export traces the model (in_onnx_export()),
so the plain `torch.onnx.export(model, args, f, dynamic_shapes=...)` (or dynamic_axes=) of a model
holding detlstm.LSTM works with no detlstm-specific argument. Each layer becomes a standard ONNX LSTM
node, emitted with torch.onnx.ops.symbolic_multi_out, which the default (torch.export-based) exporter
writes as it stands; everything around the nodes (the gate reorder i,f,g,o -> i,o,f,c, the input
forms, the padding mask, packing) is ordinary torch operations that the exporter translates. The
per-sequence lengths (lengths= or a PackedSequence's) become the nodes' sequence_lens: a reverse
direction starts at each sequence's own last step and h_n, c_n are each sequence's state at its own
end, as with detlstm's operator; output rows past a sequence's length are 0. Batch, time (and packed
row) axes stay dynamic. Half-precision modules compute in float32 inside and round once, as detlstm.

The graph runs on the ONNX runtime's arithmetic, not detlstm's: results agree with detlstm to float32
rounding (tests/test_onnx.py holds them within 1e-5 in onnxruntime), not bit for bit.

Refused, with an error naming the feature: proj_size > 0 (the ONNX LSTM operator has no projection of
the hidden state); dropout between layers in training mode (detlstm's seeded masks have no ONNX
equivalent, and an exported model is for inference: call model.eval()); the TorchScript exporter
(torch.onnx.export(..., dynamo=False)), which cannot translate the nodes.

Not handled here: pack_padded_sequence / pad_packed_sequence inside the exported model (the exporter
has no translation for aten._pack_padded_sequence, for nn.LSTM as for detlstm; pass lengths= instead),
and an ExportedProgram captured by torch.export.export beforehand (it holds detlstm's operator). A
PackedSequence given to the LSTM is exported; a model taking one as an argument must take its
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
    if torch.jit.is_tracing():
        raise NotImplementedError(
            "detlstm.LSTM ONNX export needs the default exporter, torch.onnx.export(..., dynamo=True); "
            "the TorchScript exporter (dynamo=False) cannot translate its LSTM nodes")


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
        y, y_h, y_c = torch.onnx.ops.symbolic_multi_out(
            "LSTM", [x, w, r, b, seq_lens, h0[states], c0[states]],
            {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"},
            dtypes=(dtype, dtype, dtype),
            shapes=((steps, directions, batch, hidden), (directions, batch, hidden), (directions, batch, hidden)),
        )
        x = y.permute(0, 2, 1, 3).reshape(steps, batch, directions * hidden)
        h_n.append(y_h)
        c_n.append(y_c)
    output, h_n, c_n = x, torch.cat(h_n, 0), torch.cat(c_n, 0)
    if result_dtype is not None:
        output, h_n, c_n = output.to(result_dtype), h_n.to(result_dtype), c_n.to(result_dtype)
    return output, h_n, c_n


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
    sorted PackedSequence without hx leaves batch_sizes[0], a value of the graph's input, to read."""
    if sorted_indices is not None:
        return sorted_indices.shape[0]
    if hx is not None and hx[0].dim() == 3:
        return hx[0].shape[1]
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

