"""detlstm.LSTM: a drop-in torch.nn.LSTM whose results are bitwise reproducible.

Every input form (padded, batch_first, unbatched, PackedSequence, padded + lengths) is normalised at
the boundary into one layout, time-major padded (T, B, F) plus int64 lengths in the caller's batch
order, and the whole stack runs as one registered operator (detlstm::lstm_forward, or
detlstm::lstm_inference for a call nothing will differentiate, which keeps no activations). forward
is those three steps: LSTM._canonical_inputs (checks and normalisation), LSTM._run (dtypes, dropout
seed, the operator) and _restore_form (the results in the caller's form).
"""

import contextlib
import math
import numbers
import warnings
from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence

from . import _autograd, _ops
from .onnx import export_forward, in_onnx_export

_KERNEL_DTYPES = (torch.float32, torch.float64)
# Half-precision parameters and inputs are widened to float32 for the kernels and the results
# rounded back, the same conversions on CPU and GPU, so G4 holds for them too.
_WIDENED_DTYPES = (torch.float16, torch.bfloat16)
_SUPPORTED_DTYPES = _KERNEL_DTYPES + _WIDENED_DTYPES
_UINT64_RANGE = 1 << 64


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this device type. torch asks only of device types autocast knows:
    for others (meta) it raises, where nn.LSTM just runs, so those count as off."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _takes_one_dnn(dtype, packed: bool, proj_size: int) -> bool:
    """Whether nn.LSTM on the CPU runs oneDNN's LSTM for an input of this dtype: oneDNN enabled,
    padded input, no projections, float32 (or bfloat16 where oneDNN has it)."""
    bf16 = dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.backends.mkldnn.enabled and not packed and proj_size == 0
            and (dtype == torch.float32 or bf16))


def _nn_lets_caller_modify_output(x: torch.Tensor, packed: bool, bidirectional: bool,
                                  proj_size: int) -> bool:
    """Whether the caller should get its own copy of the output, so that it may change it in place
    before backward (mask the padding, add a residual with +=) where nn.LSTM allows that: on the
    CPU everywhere but oneDNN's one-direction path, whose backward reads the output (cuDNN's
    always does). detlstm's backward reads the output everywhere. A PackedSequence's output is
    gathered into a new tensor anyway, and a jit.trace is left alone: its check reruns the call
    with gradients off and must see the same ops."""
    one_dnn_keeps_output = not bidirectional and _takes_one_dnn(x.dtype, packed, proj_size)
    return (x.device.type == "cpu" and not packed and not torch.jit.is_tracing()
            and not one_dnn_keeps_output)


def _draw_dropout_seed() -> torch.Tensor:
    # One draw from PyTorch's default CPU generator per training call, so torch.manual_seed fixes
    # the masks of a whole run on CPU and CUDA alike. (randint, unlike Tensor.random_, can be traced
    # by torch.compile; a compiled graph draws from its own generator stream, so eager and compiled
    # runs share masks only with an explicit dropout_seed.)
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


def _seed_tensor(dropout_seed) -> torch.Tensor:
    if isinstance(dropout_seed, bool) or not isinstance(dropout_seed, numbers.Integral):
        raise ValueError(f"dropout_seed must be an int in [0, 2**64), got {dropout_seed!r}")
    seed = int(dropout_seed)
    if not 0 <= seed < _UINT64_RANGE:
        raise ValueError(f"dropout_seed must be an int in [0, 2**64), got {seed}")
    if seed >= 1 << 63:  # the kernels read the 64 bits; int64 carries them in two's complement
        seed -= _UINT64_RANGE
    return torch.tensor(seed, dtype=torch.int64)


def _is_integer_scalar_tensor(value) -> bool:
    return (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool)


def _check_lengths(lengths, batch: int, steps: int) -> torch.Tensor:
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        lengths = lengths.detach().to(device="cpu", dtype=torch.int64)
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise ValueError(
                f"lengths must be a 1-D integer tensor or a sequence of ints, got {type(lengths).__name__}"
            ) from None
        # one-element integer tensors too, as pack_padded_sequence takes them (list(mask.sum(1)))
        values = [int(v) if _is_integer_scalar_tensor(v) else v for v in values]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            raise ValueError(f"lengths must contain only ints, got {values!r}")
        lengths = torch.tensor(values, dtype=torch.int64)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got a {lengths.dim()}-D tensor")
    if not torch.jit.is_tracing() and lengths.numel() != batch:  # (traced sizes: the operator checks)
        raise ValueError(f"lengths must have one entry per sequence: expected {batch}, got {lengths.numel()}")
    # Reading the values would break a torch.compile graph (or freeze a trace); the operator checks
    # them when it runs.
    if not _is_tracing() and batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(
            f"every length must lie in [1, {steps}] (the padded length), got values in "
            f"[{int(lengths.min())}, {int(lengths.max())}]"
        )
    return lengths.contiguous()


def _is_tracing() -> bool:
    """Inside torch.jit.trace or torch.compile: the checks that read tensor values are skipped (the
    operator checks the lengths again when it runs)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _check_permutation(indices, name: str, batch: int) -> None:
    if indices.dim() != 1 or indices.dtype != torch.int64 or indices.numel() != batch:
        raise ValueError(f"PackedSequence.{name} must be a 1-D int64 tensor of {batch} values (one per "
                         f"sequence), got shape {tuple(indices.shape)} and dtype {indices.dtype}")
    if not torch.equal(torch.sort(indices.cpu()).values, torch.arange(batch)):
        raise ValueError(f"PackedSequence.{name} must be a permutation of range({batch}), got "
                         f"{indices.tolist()}")


def _check_packed_layout(batch_sizes) -> None:
    """batch_sizes' form, which reading no value can check (so also while traced or exported)."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        # torch.export's stand-in for pack_padded_sequence gives float batch_sizes, for nn.LSTM too
        hint = (" (torch.export cannot trace pack_padded_sequence: give detlstm.LSTM the padded input "
                "with lengths= instead)" if _is_tracing() and batch_sizes.is_floating_point() else "")
        raise ValueError("PackedSequence.batch_sizes must be a 1-D int64 CPU tensor, got shape "
                         f"{tuple(batch_sizes.shape)}, dtype {batch_sizes.dtype} on {batch_sizes.device}"
                         + hint)


def _check_packed(packed: PackedSequence) -> None:
    """A PackedSequence as pack_padded_sequence makes it: batch_sizes positive, non-increasing and
    summing to the data's rows; sorted_indices and unsorted_indices permutations, each the other's
    inverse. (nn.LSTM's kernels trust these; ours would read rows that do not exist.)"""
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    if batch_sizes.numel() == 0 or int(batch_sizes.min()) < 1:
        raise ValueError(f"PackedSequence.batch_sizes must be positive, got {batch_sizes.tolist()}")
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise ValueError(f"PackedSequence.batch_sizes must be non-increasing, got {batch_sizes.tolist()}")
    if int(batch_sizes.sum()) != data.size(0):
        raise ValueError(f"PackedSequence.batch_sizes sums to {int(batch_sizes.sum())} rows but its data "
                         f"has {data.size(0)} rows")
    batch = int(batch_sizes[0])
    if sorted_indices is None:
        if unsorted_indices is not None:
            raise ValueError("PackedSequence.unsorted_indices is given without sorted_indices")
        return
    _check_permutation(sorted_indices, "sorted_indices", batch)
    if unsorted_indices is not None:
        _check_permutation(unsorted_indices, "unsorted_indices", batch)
        if not torch.equal(unsorted_indices.cpu()[sorted_indices.cpu()], torch.arange(batch)):
            raise ValueError("PackedSequence.unsorted_indices must be the inverse permutation of "
                             "sorted_indices")


def _packed_to_padded(packed: PackedSequence):
    """A PackedSequence as time-major padded data in the caller's batch order, plus what is needed
    to pack the output the same way (same batch_sizes and indices). Tensor operations only, the
    batch size kept as a tensor: torch.jit.trace records it as data, not as a constant."""
    data, batch_sizes, sorted_indices, _ = packed
    steps, batch = batch_sizes.size(0), batch_sizes[0]
    positions = torch.arange(batch)
    sorted_lengths = (batch_sizes.unsqueeze(0) > positions.unsqueeze(1)).sum(1)
    user_row = positions if sorted_indices is None else sorted_indices.to("cpu", torch.int64)
    lengths = torch.zeros_like(sorted_lengths).scatter(0, user_row, sorted_lengths)
    # Packed row r holds (t, sorted position i); its padded slot is t * B + user_row[i].
    step_of_row = torch.repeat_interleave(torch.arange(steps), batch_sizes)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    position_of_row = torch.arange(data.size(0)) - offsets[step_of_row]
    slot_of_row = step_of_row * batch + user_row[position_of_row]
    # Gathers only, in both directions: every padded slot reads one packed row or a zero row.
    source = torch.full_like(positions, data.size(0)).repeat(steps)
    source = source.scatter(0, slot_of_row, torch.arange(data.size(0)))
    padded = torch.cat([data, data.new_zeros(1, data.size(1))])[source.to(data.device)]
    return padded.view(steps, batch, data.size(1)), lengths, slot_of_row.to(data.device)


class _CallerForm(NamedTuple):
    """How the caller passed the input, so the results go back in the same form."""
    packed: Optional[PackedSequence]  # the caller's PackedSequence: its batch_sizes and indices
    packed_slots: Optional[torch.Tensor]  # padded slot (t * B + b) of every packed row
    batched: bool  # False: unbatched (T, F) input, one sequence
    batch_first: bool  # (B, T, *) output


def _restore_form(form: _CallerForm, output, h_n, c_n):
    """The canonical results (output (T, B, *), h_n, c_n) in the caller's form, as nn.LSTM gives them."""
    if form.packed is not None:
        flat = output.reshape(output.size(0) * output.size(1), output.size(-1))
        packed = form.packed
        return PackedSequence(flat[form.packed_slots], packed.batch_sizes, packed.sorted_indices,
                              packed.unsorted_indices), (h_n, c_n)
    if not form.batched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if form.batch_first:
        output = output.transpose(0, 1)
    return output, (h_n, c_n)


def _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, dtype):
    """The constructor's argument checks, with nn.LSTM's messages and exception types."""
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=3,  # the caller of LSTM(...)
        )
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")
    if dtype is not None and dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"detlstm.LSTM supports dtypes float32, float64, float16 and bfloat16, got {dtype}")


class LSTM(nn.LSTM):
    """Drop-in replacement for :class:`torch.nn.LSTM` with bitwise reproducible results.

    Same constructor, parameters, ``state_dict``, inputs and outputs as ``nn.LSTM``. ``forward`` also
    accepts ``lengths=`` (per-sequence lengths of a padded batch; padding rows of the output are 0)
    and ``dropout_seed=`` (the 64-bit seed of the dropout masks; by default one is drawn from
    PyTorch's default CPU generator on each training call).

    A subclass of nn.LSTM, so code that looks for nn.LSTM or nn.RNNBase (initialisation loops,
    hooks) finds it; none of nn.RNNBase's weight caching is used: the forward reads the parameters
    by name on every call. (torch.compile treats every nn.LSTM instance as unsupported unless
    torch._dynamo.config.allow_rnn is set; with it, detlstm.LSTM compiles with fullgraph=True.)
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        nn.Module.__init__(self)  # not nn.RNNBase's: it would build cuDNN's flat weight cache
        _check_config(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size, dtype)
        self.mode = "LSTM"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self._make_parameters({"device": device, "dtype": dtype})
        self.reset_parameters()

    def _make_parameters(self, factory) -> None:
        """nn.LSTM's parameters, names, shapes and order (_flat_weights_names, _all_weights)."""
        directions = 2 if self.bidirectional else 1
        gate_size = 4 * self.hidden_size
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(self.num_layers):
            for direction in range(directions):
                layer_input = self.input_size if layer == 0 else real_hidden * directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = {
                    f"weight_ih_l{layer}{suffix}": (gate_size, layer_input),
                    f"weight_hh_l{layer}{suffix}": (gate_size, real_hidden),
                }
                if self.bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gate_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gate_size,)
                if self.proj_size > 0:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (self.proj_size, self.hidden_size)
                for name, shape in shapes.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(shapes)
                self._all_weights.append(list(shapes))

    def reset_parameters(self) -> None:
        # nn.LSTM's initialisation, in its order: same seed, same weights.
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    @property
    def _flat_weights(self):
        """The parameters in nn.LSTM's order, read by name (None for one that was deleted)."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, _value) -> None:
        """nn.RNNBase's methods assign their cache here; ours is always read from the parameters."""

    # nn.RNNBase's versions rebuild its flat weight cache (and __setattr__ keeps it in step); an
    # nn.Module's are all this module needs.
    __setattr__ = nn.Module.__setattr__
    __getstate__ = nn.Module.__getstate__
    __setstate__ = nn.Module.__setstate__
    _apply = nn.Module._apply
    _replicate_for_data_parallel = nn.Module._replicate_for_data_parallel

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "torch.jit.script cannot compile detlstm.LSTM: its forward takes keyword-only arguments "
            "(lengths=, dropout_seed=) and runs Python-side input handling that TorchScript does not "
            "support. Use torch.jit.trace (padded and PackedSequence inputs both trace, batch size "
            "and length stay dynamic), torch.compile, or torch.export instead.")

    def _weights(self):
        """The parameters for a call; a clear error naming any that was deleted."""
        weights = self._flat_weights
        missing = [name for name, w in zip(self._flat_weights_names, weights) if w is None]
        if missing:
            raise AttributeError(
                f"detlstm.LSTM is missing its parameter(s) {', '.join(missing)} (deleted?); assign "
                "them again before calling the module")
        return weights

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """A no-op: the kernels read the parameters where they are (kept for nn.LSTM parity)."""

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    def _check_input_tensor(self, input: torch.Tensor, weights) -> None:
        if input.dtype != weights[0].dtype and not _autocast_on(input.device.type):
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weights[0].dtype}). "
                f"Convert input: input.to({weights[0].dtype}), or convert model: model.to({input.dtype})"
            )
        if input.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(
                f"detlstm.LSTM supports float32, float64, float16 and bfloat16 inputs, got {input.dtype}")
        if input.device != weights[0].device:
            raise ValueError(f"input is on {input.device} but the LSTM's weights are on {weights[0].device}")
        if input.is_cuda and not _ops.HAS_CUDA_KERNELS:
            raise RuntimeError(
                "detlstm was built without its CUDA kernels (no nvcc or no CUDA build of torch at "
                "build time): rebuild with `pip install --no-build-isolation .` where nvcc is available"
            )
        # (Skipped while tracing, where comparing a size warns; the operator checks it again.)
        if not torch.jit.is_tracing() and input.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _state_shapes(self, batch: int):
        """(h_0 shape, c_0 shape): h has proj_size features with projections, c has hidden_size."""
        layers = self.num_layers * (2 if self.bidirectional else 1)
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (layers, batch, real_hidden), (layers, batch, self.hidden_size)

    def _check_hidden(self, hx, batch: int, input: torch.Tensor):
        for tensor, which, expected in zip(hx, (0, 1), self._state_shapes(batch)):
            if tuple(tensor.shape) != expected:
                raise RuntimeError(f"Expected hidden[{which}] size {expected}, got {list(tensor.shape)}")
            if tensor.dtype != input.dtype and not _autocast_on(input.device.type):
                raise RuntimeError(f"hx[{which}] has dtype {tensor.dtype} but input has dtype {input.dtype}")
            if tensor.device != input.device:
                raise RuntimeError(f"hx[{which}] is on {tensor.device} but input is on {input.device}")

    def _compute_dtypes(self, x, hx, weights, packed):
        """Under autocast, inputs, states and weights are rounded to the autocast dtype first (as
        autocast does for nn.LSTM; float64 is never cast); half-precision values are then widened
        to float32 for the kernels. Returns the tensors to run and the dtypes to give (output, h_n,
        c_n) in, each None where the kernels' dtype is the one to give."""
        device_type = x.device.type
        if _autocast_on(device_type) and x.is_floating_point() and x.dtype != torch.float64:
            amp = torch.get_autocast_dtype(device_type)
            result_dtypes = self._autocast_result_dtypes(device_type, amp, packed, x.dtype,
                                                         hx[1].dtype)
            x, weights = x.to(amp), [w.to(amp) for w in weights]
            hx = (hx[0].to(amp), hx[1].to(amp))
        else:
            result_dtypes = (x.dtype,) * 3
        if x.dtype not in _WIDENED_DTYPES:
            return x, hx, weights, (None, None, None)
        return (x.float(), (hx[0].float(), hx[1].float()), [w.float() for w in weights],
                tuple(None if d == torch.float32 else d for d in result_dtypes))

    def _autocast_result_dtypes(self, device_type, amp, packed, x_dtype, c0_dtype):
        """The dtypes nn.LSTM's results come in under autocast, from the dtypes the caller passed.
        On the CPU autocast lowers oneDNN's layer (where nn.LSTM takes it: all three in amp) and
        the products of ATen's LSTM, whose cell state keeps c0's dtype promoted with amp; h comes
        from the cell there, or from a product with projections."""
        if device_type != "cpu":
            return (amp,) * 3
        if _takes_one_dnn(x_dtype, packed, self.proj_size):
            return (amp,) * 3
        c = torch.promote_types(amp, c0_dtype)
        h = amp if self.proj_size > 0 else c
        return h, h, c

    def forward(self, input, hx=None, *, lengths=None, dropout_seed=None):
        if in_onnx_export():  # ONNX nodes instead of our operator: detlstm/onnx.py
            return export_forward(self, input, hx, lengths)
        weights = self._weights()
        x, seq_lengths, (h0, c0), form = self._canonical_inputs(input, hx, lengths, weights)
        output, h_n, c_n = self._run(x, seq_lengths, h0, c0, weights, dropout_seed,
                                     packed=form.packed is not None)
        return _restore_form(form, output, h_n, c_n)

    def _canonical_inputs(self, input, hx, lengths, weights):
        """What the caller passed, in the one layout the operator takes: x time-major (T, B, F),
        int64 lengths (B,) in the caller's batch order, h0 and c0 (layers * directions, B, *), and the
        _CallerForm that _restore_form needs to give the results back in the caller's form."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise RuntimeError("hx must be a tuple (h_0, c_0) of two tensors")
        if isinstance(input, PackedSequence):
            x, seq_lengths, form = self._from_packed(input, lengths, weights)
        else:
            x, seq_lengths, form = self._from_padded(input, lengths, weights)
        if not torch.jit.is_tracing() and x.shape[0] == 0:  # nn.LSTM's error; a batch of 0 sequences is valid (empty results)
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        return x, seq_lengths, self._initial_state(hx, x, form), form

    def _from_packed(self, packed: PackedSequence, lengths, weights):
        if lengths is not None:
            raise ValueError("lengths= is for padded tensors; a PackedSequence carries its own lengths")
        if packed.data.dim() != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {packed.data.dim()}")
        self._check_input_tensor(packed.data, weights)
        _check_packed_layout(packed.batch_sizes)
        if not _is_tracing():
            _check_packed(packed)
        # (autocast's promotion of torch.cat refuses a float16 PackedSequence under bfloat16: the
        # layout change is no arithmetic, so autocast stays out of it)
        with torch.autocast(packed.data.device.type, enabled=False) \
                if _autocast_on(packed.data.device.type) else contextlib.nullcontext():
            x, seq_lengths, slots = _packed_to_padded(packed)
        return x, seq_lengths, _CallerForm(packed, slots, batched=True, batch_first=False)

    def _from_padded(self, input, lengths, weights):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        if not batched:
            if lengths is not None:
                raise ValueError("lengths= needs a batched (3-D) input; an unbatched input is one sequence")
            x = input.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        self._check_input_tensor(x, weights)
        steps, batch = x.shape[0], x.shape[1]
        if lengths is None:
            seq_lengths = torch.full((batch,), steps, dtype=torch.int64)
        else:
            seq_lengths = _check_lengths(lengths, batch, steps)
        return x, seq_lengths, _CallerForm(None, None, batched, batched and self.batch_first)

    def _initial_state(self, hx, x: torch.Tensor, form: _CallerForm):
        """(h0, c0) with a batch dimension: zeros without hx, else the caller's, checked."""
        batch = x.shape[1]
        if hx is None:
            h_shape, c_shape = self._state_shapes(batch)
            return x.new_zeros(h_shape), x.new_zeros(c_shape)
        h0, c0 = hx
        if form.packed is None and form.batched and (h0.dim() != 3 or c0.dim() != 3):
            raise RuntimeError(
                "For batched 3-D input, hx and cx should also be 3-D but got "
                f"({h0.dim()}-D, {c0.dim()}-D) tensors"
            )
        if not form.batched:
            if h0.dim() != 2 or c0.dim() != 2:
                raise RuntimeError(
                    "For unbatched 2-D input, hx and cx should also be 2-D but got "
                    f"({h0.dim()}-D, {c0.dim()}-D) tensors"
                )
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if not torch.jit.is_tracing():  # (comparing traced sizes warns; the operator checks them)
            self._check_hidden((h0, c0), batch, x)
        # nn.LSTM runs sparse states as their dense values; the kernels read strided memory
        return tuple(t.to_dense() if t.layout != torch.strided else t for t in (h0, c0))

    def _dropout_seed(self, dropout_seed) -> torch.Tensor:
        if dropout_seed is not None:
            return _seed_tensor(dropout_seed)
        if self.training and self.dropout > 0 and self.num_layers > 1:
            return _draw_dropout_seed()
        return torch.zeros((), dtype=torch.int64)

    def _run(self, x, lengths, h0, c0, weights, dropout_seed, packed):
        """The operator on the canonical layout: (output (T, B, D * H), h_n, c_n) in the caller's dtype."""
        x, (h0, c0), weights, result_dtypes = self._compute_dtypes(x, (h0, c0), weights, packed)
        seed = self._dropout_seed(dropout_seed)
        output, h_n, c_n = _autograd.lstm(
            x, lengths, h0, c0, weights, self.bias, self.num_layers, self.bidirectional,
            self.dropout, self.training, seed, self.proj_size)
        if result_dtypes[0] is None and output.requires_grad and \
                _nn_lets_caller_modify_output(x, packed, self.bidirectional, self.proj_size):
            output = output.clone()  # the caller's own: the backward reads the saved original
        return tuple(t if d is None else t.to(d) for t, d in zip((output, h_n, c_n), result_dtypes))

