"""nn.LSTM's behaviour at the edges, with nn.LSTM as the control where it has one: empty batches and
sequences, malformed PackedSequences, flush-to-zero, TorchScript, messages and types."""

import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import detlstm
from helpers import assert_bitwise_equal

I, H = 3, 4


def _pair(**kwargs):
    torch.manual_seed(0)
    ours = detlstm.LSTM(I, H, **kwargs)
    ref = nn.LSTM(I, H, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _run_with_grads(model, x, hx=None):
    x = x.clone().requires_grad_()
    out, (h, c) = model(x, hx)
    (out.sum() + h.sum() + c.sum()).backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad()
    return out, h, c, x.grad, grads


# -- empty batch, empty sequence ---------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True},
                                    {"proj_size": 2, "bidirectional": True}])
def test_empty_batch_as_nn_lstm(batch_first, kwargs):
    ours, ref = _pair(batch_first=batch_first, **kwargs)
    x = torch.randn(0, 5, I) if batch_first else torch.randn(5, 0, I)
    got, want = _run_with_grads(ours, x), _run_with_grads(ref, x)
    for g, w in zip(got[:4], want[:4]):
        assert g.shape == w.shape and g.dtype == w.dtype
    for g, w in zip(got[4], want[4]):  # the weights' gradients: sums over no sequence
        assert g.shape == w.shape and not g.any() and not w.any()


def test_empty_batch_with_state_and_lengths():
    ours, _ = _pair(num_layers=2)
    h0 = torch.zeros(2, 0, H)
    out, (h, c) = ours(torch.randn(4, 0, I), (h0, h0), lengths=torch.zeros(0, dtype=torch.int64))
    assert out.shape == (4, 0, H) and h.shape == c.shape == (2, 0, H)


@pytest.mark.parametrize("cls", [nn.LSTM, detlstm.LSTM])
@pytest.mark.parametrize("shape", [(0, 2, I), (2, 0, I)])
def test_zero_length_sequence_error(cls, shape):
    batch_first = shape[1] == 0  # (B, T=0, I) with batch_first
    with pytest.raises(RuntimeError, match="^Expected sequence length to be larger than 0 in RNN$"):
        cls(I, H, batch_first=batch_first)(torch.randn(*shape))


# -- malformed PackedSequence --------------------------------------------------------------------

def _packed():
    return pack_padded_sequence(torch.randn(4, 3, I), torch.tensor([4, 2, 3]), enforce_sorted=False)


def _malformed():
    p = _packed()
    data, sizes, s, u = p
    return [
        (PackedSequence(data[:-1], sizes, s, u), "sums to 9 rows but its data has 8"),
        (PackedSequence(torch.cat([data, data[:1]]), sizes, s, u), "sums to 9 rows but its data has 10"),
        (PackedSequence(data, torch.tensor([3, 2, 2, 1]), s, u), "sums to 8 rows but its data has 9"),
        (PackedSequence(data, torch.tensor([2, 3, 2, 2]), s, u), "non-increasing"),
        (PackedSequence(data, torch.tensor([3, 3, 3, 0]), s, u), "positive"),
        (PackedSequence(data, sizes.int(), s, u), "1-D int64 CPU"),
        (PackedSequence(data, sizes, torch.tensor([0, 0, 1]), u), "permutation of range\\(3\\)"),
        (PackedSequence(data, sizes, torch.tensor([0, 1, 3]), u), "permutation of range\\(3\\)"),
        (PackedSequence(data, sizes, torch.tensor([0, -1, 2]), u), "permutation of range\\(3\\)"),
        (PackedSequence(data, sizes, s[:2], u), "sorted_indices must be a 1-D int64 tensor of 3"),
        (PackedSequence(data, sizes, s, torch.tensor([2, 2, 0])), "unsorted_indices must be a permutation"),
        (PackedSequence(data, sizes, s, torch.roll(u, 1)), "inverse permutation"),
        (PackedSequence(data, sizes, None, u), "unsorted_indices is given without sorted_indices"),
    ]


@pytest.mark.parametrize("index", range(13))
def test_malformed_packed_sequence_is_refused(index):
    packed, match = _malformed()[index]
    with pytest.raises(ValueError, match=match):
        detlstm.LSTM(I, H)(packed)


def test_wellformed_packed_sequence_still_matches_nn_lstm():
    ours, ref = _pair(bidirectional=True)
    p = _packed()
    torch.testing.assert_close(ours(p)[0].data, ref(p)[0].data, rtol=2e-5, atol=2e-6)


# -- flush-to-zero -------------------------------------------------------------------------------

def _subnormal_case(dtype):
    torch.manual_seed(3)
    model = detlstm.LSTM(I, H, num_layers=2, bidirectional=True, dropout=0.3).to(dtype)
    tiny = torch.finfo(dtype).tiny
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(tiny * 4) if name.startswith("bias") else p.mul_(0.5)
    x = torch.randn(5, 3, I, dtype=dtype) * tiny * 8  # subnormal products and sums
    return model, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["generic", "avx2", "avx512"])
def test_flush_denormal_changes_no_bit(dtype, variant):
    """Each CPU kernel build clears flush-to-zero for its own threads (every build has its own
    DenormalGuard and its own vector code)."""
    from detlstm._info import cpu_variants
    if variant not in cpu_variants()[2]:
        pytest.skip(f"this CPU cannot run the {variant} build")
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    torch.set_flush_denormal(False)
    before = detlstm.set_cpu_variant(variant)
    try:
        _flush_denormal_case_keeps_bits(dtype)
    finally:
        detlstm.set_cpu_variant(before)


def _flush_denormal_case_keeps_bits(dtype):
    model, x = _subnormal_case(dtype)

    def run():
        out, (h, c) = model(x.clone().requires_grad_(), lengths=[5, 2, 4], dropout_seed=5)
        grads = torch.autograd.grad(out.square().sum() + h.sum(), list(model.parameters()))
        return [out, h, c, *grads]
    plain = run()
    torch.set_flush_denormal(True)
    try:
        flushed = run()
    finally:
        torch.set_flush_denormal(False)
    assert any((t.abs() < torch.finfo(dtype).tiny).logical_and(t != 0).any() for t in plain[3:]), \
        "the case must produce subnormal results, or it tests nothing"
    for k, (a, b) in enumerate(zip(plain, flushed)):
        assert_bitwise_equal(a, b, f"result {k} under flush-to-zero")


# -- TorchScript -----------------------------------------------------------------------------------

class _PackingModel(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.lstm = cls(I, H, num_layers=2, bidirectional=True)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        return pad_packed_sequence(out, total_length=x.size(0))[0], h, c


class _LengthsModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = detlstm.LSTM(I, H, bidirectional=True, batch_first=True)

    def forward(self, x, lengths):
        out, (h, c) = self.lstm(x, lengths=lengths)
        return out, h, c


def _trace(model, example):
    """torch.jit.trace, checking that none of detlstm's code froze a value into the trace (torch's
    own pack_padded_sequence warns, for nn.LSTM as for us)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example)
    ours = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)
            and "detlstm" in w.filename.replace("\\", "/").split("/")]
    assert not ours, f"detlstm's code warns while traced: {ours}"
    return traced


@pytest.mark.parametrize("cls", [nn.LSTM, detlstm.LSTM])
def test_trace_of_a_packing_model_runs_at_other_sizes(cls):
    torch.manual_seed(0)
    model = _PackingModel(cls).eval()
    traced = _trace(model, (torch.randn(5, 3, I), torch.tensor([5, 2, 4])))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    for steps, lengths in ((6, [6, 1, 3, 6, 2]), (2, [1, 2]), (4, [4])):
        x = torch.randn(steps, len(lengths), I)
        want = model(x, torch.tensor(lengths))
        for run in (traced, loaded):
            for got, w in zip(run(x, torch.tensor(lengths)), want):
                assert_bitwise_equal(got, w, f"traced {cls.__module__} at {steps}x{len(lengths)}")


def test_trace_with_lengths_runs_at_other_sizes():
    torch.manual_seed(0)
    model = _LengthsModel().eval()
    traced = _trace(model, (torch.randn(3, 5, I), torch.tensor([5, 2, 4])))
    x, lengths = torch.randn(4, 7, I), torch.tensor([7, 1, 3, 5])
    for got, want in zip(traced(x, lengths), model(x, lengths)):
        assert_bitwise_equal(got, want, "traced lengths= model")


class _ExportedModel(nn.Module):
    """Padded input, lengths= when given; in training mode an explicit dropout_seed= (an exported
    graph cannot draw a fresh one per call)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.lstm = detlstm.LSTM(I, H, **kwargs)

    def forward(self, x, lengths=None):
        seed = {"dropout_seed": 7} if self.training else {}
        out, (h_n, c_n) = self.lstm(x, lengths=lengths, **seed)
        return out, h_n, c_n


@pytest.mark.parametrize("kwargs, training, with_lengths", [
    (dict(num_layers=2, bidirectional=True), False, False),
    (dict(num_layers=2, bidirectional=True), False, True),
    (dict(num_layers=2, dropout=0.3), True, True),
    (dict(batch_first=True, proj_size=2), False, True),
], ids=["bi", "bi-lengths", "dropout-train-lengths", "batch_first-proj-lengths"])
def test_torch_export_runs_at_other_sizes_with_the_eager_bits(kwargs, training, with_lengths):
    """torch.export.export with batch and time dynamic records detlstm's operator (its fake kernel gives
    the shapes); the exported module, also after torch.export.save and load, gives the eager bits at
    other sizes."""
    torch.manual_seed(0)
    model = _ExportedModel(**kwargs).train(training)
    batch_first = kwargs.get("batch_first", False)
    steps, batch = torch.export.Dim("T", min=1, max=64), torch.export.Dim("B", min=1, max=64)
    x_axes = {0: batch, 1: steps} if batch_first else {0: steps, 1: batch}

    def inputs(t, b):
        x = torch.randn(b, t, I) if batch_first else torch.randn(t, b, I)
        lengths = torch.randint(1, t + 1, (b,))
        lengths[0] = t
        return (x, lengths) if with_lengths else (x,)

    program = torch.export.export(model, inputs(6, 3),
                                  dynamic_shapes=(x_axes, {0: batch}) if with_lengths else (x_axes,))
    assert any("detlstm" in str(node.target) for node in program.graph.nodes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    for t, b in ((1, 1), (9, 5), (4, 2)):
        args = inputs(t, b)
        want = model(*args)
        for run in (program.module(), loaded.module()):
            for got, w in zip(run(*args), want):
                assert_bitwise_equal(got, w, f"exported at {t}x{b}")


def test_torch_export_of_a_packing_model_says_to_pass_lengths():
    """torch.export cannot trace pack_padded_sequence (its stand-in gives float batch_sizes of unknown
    length; nn.LSTM fails there too, with a TypeError about zeros()): detlstm refuses the
    PackedSequence by name and says what to export instead."""
    model = _PackingModel(detlstm.LSTM).eval()
    with pytest.raises(ValueError, match=r"batch_sizes must be a 1-D int64.*lengths= instead"):
        torch.export.export(model, (torch.randn(5, 3, I), torch.tensor([5, 2, 4])))


def test_script_gives_a_clear_error():
    for target in (detlstm.LSTM(I, H), nn.Sequential(detlstm.LSTM(I, H))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(RuntimeError, match="torch.jit.script cannot compile detlstm.LSTM.*"
                                                   "torch.jit.trace"):
                torch.jit.script(target)


# -- messages and types -----------------------------------------------------------------------------

def test_dtype_mismatch_message_is_nn_lstm_s():
    messages = []
    for model in _pair():
        with pytest.raises(ValueError) as info:
            model(torch.randn(2, 1, I, dtype=torch.float64))
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_deleted_weight_is_named():
    model = detlstm.LSTM(I, H, num_layers=2)
    weight = model.weight_hh_l1
    del model.weight_hh_l1
    assert not hasattr(model, "weight_hh_l1")
    with pytest.raises(AttributeError, match="missing its parameter\\(s\\) weight_hh_l1"):
        model(torch.randn(2, 1, I))
    model.weight_hh_l1 = weight
    assert model(torch.randn(2, 1, I))[0].shape == (2, 1, H)


def test_is_an_nn_lstm_and_convert_leaves_it_alone():
    ours = detlstm.LSTM(I, H)
    assert isinstance(ours, nn.LSTM) and isinstance(ours, nn.RNNBase)
    assert detlstm.convert(ours) is ours
    model = nn.Sequential(ours, nn.LSTM(I, H))
    detlstm.convert(model)
    assert model[0] is ours and type(model[1]) is detlstm.LSTM


def test_nn_rnnbase_methods_keep_working():
    """What nn.RNNBase gives every nn.LSTM (flatten_parameters, all_weights, moving, copying, the
    weights seen by initialisation loops) works on detlstm.LSTM and reaches its forward."""
    import copy
    import pickle

    ours, ref = _pair(num_layers=2, bidirectional=True)
    ours.flatten_parameters()
    for module in ours.modules():
        if isinstance(module, nn.LSTM):
            for weights in module.all_weights:
                nn.init.constant_(weights[1], 0.01)  # weight_hh_l*: as an init loop would
    assert all(torch.all(ws[1] == 0.01) for ws in ours.all_weights)
    x = torch.randn(3, 2, I, dtype=torch.float64)
    moved = ours.double()
    assert moved is ours and ours.weight_hh_l1_reverse.dtype == torch.float64
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is detlstm.LSTM
        assert_bitwise_equal(clone(x)[0], ours(x)[0], "copied module")


def _meta_results(module, form, dtype):
    """The module's results on meta inputs of one caller form, as (kind, shape, dtype, device) each."""
    time_major = torch.randn(5, 3, 8, device="meta", dtype=dtype)
    x = time_major.transpose(0, 1) if module.batch_first else time_major
    args = {"padded": (x,), "unbatched": (time_major[:, 0],),
            "packed": (pack_padded_sequence(time_major, torch.tensor([5, 3, 2])),)}.get(form)
    if form == "hx":
        layers = module.num_layers * (2 if module.bidirectional else 1)
        h = module.proj_size or module.hidden_size
        args = (x, (torch.randn(layers, 3, h, device="meta", dtype=dtype),
                    torch.randn(layers, 3, module.hidden_size, device="meta", dtype=dtype)))
    out, (h_n, c_n) = module(*args)
    data = out.data if isinstance(out, PackedSequence) else out
    return out, [type(out).__name__] + [(tuple(t.shape), t.dtype, t.device.type)
                                        for t in (data, h_n, c_n)]


@pytest.mark.parametrize("kwargs", [{}, dict(batch_first=True),
                                    dict(num_layers=2, bidirectional=True, dropout=0.3),
                                    dict(proj_size=4, num_layers=2), dict(dtype=torch.float16),
                                    dict(dtype=torch.float64, bidirectional=True)],
                         ids=["plain", "batch_first", "bi-dropout", "proj", "float16", "float64-bi"])
@pytest.mark.parametrize("form", ["padded", "unbatched", "packed", "hx"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_meta_tensors_give_nn_lstms_shapes(kwargs, form, training):
    """On meta tensors (shape inference, deferred initialisation) nn.LSTM gives results with shapes
    and no values; so does detlstm, forward and backward, through its operators' fake kernels.
    Autocast used to be asked about the meta device, which torch refuses."""
    dtype = kwargs.get("dtype", torch.float32)
    ours = detlstm.LSTM(8, 16, device="meta", **kwargs).train(training)
    ref = nn.LSTM(8, 16, device="meta", **kwargs).train(training)
    out, got = _meta_results(ours, form, dtype)
    ref_out, want = _meta_results(ref, form, dtype)
    assert got == want
    if training:
        (out.data if isinstance(out, PackedSequence) else out).sum().backward()
        for name, p in ours.named_parameters():
            assert p.grad is not None and p.grad.is_meta and p.grad.shape == p.shape, name


def test_built_on_meta_then_materialised_gives_the_real_modules_bits():
    """Deferred initialisation: build under `torch.device('meta')`, to_empty, load real weights."""
    torch.manual_seed(0)
    real = detlstm.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4)
    with torch.device("meta"):
        deferred = detlstm.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4)
    deferred.to_empty(device="cpu")
    deferred.load_state_dict(real.state_dict())
    x = torch.randn(5, 3, 8)
    got, want = deferred(x, lengths=[5, 2, 4]), real(x, lengths=[5, 2, 4])
    for a, b, what in zip((got[0], *got[1]), (want[0], *want[1]), ("output", "h_n", "c_n")):
        assert_bitwise_equal(a, b, what)


def _grad_after_changing_output(cls, kwargs, in_place):
    """x's gradient after the output is masked and shifted, in place or not; None if it raises."""
    torch.manual_seed(0)
    dtype = kwargs.get("dtype", torch.float32)
    model = cls(4, 6, **kwargs)
    x = torch.randn(3, 5, 4, dtype=dtype) if kwargs.get("batch_first") else torch.randn(5, 3, 4, dtype=dtype)
    x.requires_grad_()
    out, _ = model(x)
    mask = torch.rand(out.shape) < 0.3
    if in_place:
        out[mask] = 0
        out += 1
    else:
        out = out.masked_fill(mask, 0) + 1
    try:
        (out * out).sum().backward()
    except RuntimeError as err:
        assert "modified by an inplace operation" in str(err)
        return None
    return x.grad


@pytest.mark.parametrize("one_dnn", [True, False], ids=["oneDNN", "no-oneDNN"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bidirectional,proj_size,num_layers,batch_first",
                         [(False, 0, 1, False), (False, 0, 2, True), (True, 0, 2, False),
                          (False, 3, 1, False), (True, 3, 2, True)],
                         ids=["uni", "uni-2-batch_first", "bi-2", "proj", "bi-proj-batch_first"])
def test_output_changed_in_place_before_backward_as_nn_lstm(dtype, bidirectional, proj_size,
                                                              num_layers, batch_first, one_dnn):
    """Where nn.LSTM on the CPU lets a caller change the output in place before backward (masking
    a bidirectional tagger's padding, a residual +=), so does detlstm, with the gradient of the same
    change made out of place, bit for bit. nn.LSTM refuses on its oneDNN path (float32 or bfloat16,
    one direction, no projections, oneDNN enabled); detlstm refuses in float32 there (no copy on
    that path), and allows it in bfloat16, whose float32 results are converted into new tensors
    anyway."""
    kwargs = dict(bidirectional=bidirectional, proj_size=proj_size, num_layers=num_layers,
                  batch_first=batch_first, dtype=dtype)
    with torch.backends.mkldnn.flags(enabled=one_dnn):
        nn_allows = _grad_after_changing_output(nn.LSTM, kwargs, True) is not None
        ours = _grad_after_changing_output(detlstm.LSTM, kwargs, True)
        out_of_place = _grad_after_changing_output(detlstm.LSTM, kwargs, False)
    one_dnn_float32 = one_dnn and dtype == torch.float32 and not bidirectional and proj_size == 0
    assert (ours is not None) == (nn_allows or dtype == torch.bfloat16), (nn_allows, ours)
    assert (ours is None) == one_dnn_float32
    if ours is not None:
        assert_bitwise_equal(ours, out_of_place)


def test_lengths_as_one_element_tensors_as_pack_padded_sequence_takes_them():
    """list(mask.sum(1)) is a list of 0-d tensors; pack_padded_sequence takes it, so lengths= does."""
    torch.manual_seed(0)
    model = detlstm.LSTM(4, 6, bidirectional=True, batch_first=True)
    x = torch.randn(3, 5, 4)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 2 + [0] * 3])
    for given in (list(mask.sum(1)), [torch.tensor([5]), torch.tensor(3, dtype=torch.int32), 2]):
        got, want = model(x, lengths=given), model(x, lengths=[5, 3, 2])
        assert_bitwise_equal(got[0], want[0])


def test_sparse_initial_state_runs_as_its_dense_values():
    """nn.LSTM takes a sparse h0 or c0 (as its dense values); so does detlstm, gradient included."""
    torch.manual_seed(0)
    model = detlstm.LSTM(4, 6, bidirectional=True)
    x = torch.randn(5, 3, 4)
    h0, c0 = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    want = model(x, (h0, c0))
    sparse_h0 = h0.to_sparse().requires_grad_()
    got = model(x, (sparse_h0, c0.to_sparse()))
    for a, b in zip((got[0], *got[1]), (want[0], *want[1])):
        assert_bitwise_equal(a, b)
    got[0].sum().backward()
    h0.requires_grad_()
    model(x, (h0, c0))[0].sum().backward()
    torch.testing.assert_close(sparse_h0.grad.to_dense(), h0.grad, rtol=0, atol=0)


def test_packed_output_is_not_copied_twice():
    """A PackedSequence's output is gathered into a new tensor already: no extra copy for the
    caller (the chain of the output's gradient holds no clone), and it may still be changed in place."""
    model = detlstm.LSTM(4, 6, bidirectional=True)
    x = torch.randn(5, 3, 4, requires_grad=True)
    out, _ = model(pack_padded_sequence(x, [5, 4, 2]))
    names, fn = [], out.data.grad_fn
    while fn is not None and len(names) < 6:
        names.append(type(fn).__name__)
        fn = fn.next_functions[0][0] if fn.next_functions else None
    assert not any("Clone" in n for n in names), names
    out.data.mul_(2)
    out.data.sum().backward()
    assert x.grad is not None
