"""PyTorch's ModuleInfo tests (test/test_modules.py, class TestModule) re-aimed at detlstm.LSTM, with
torch.nn.LSTM as the control: each test runs on torch.nn.LSTM's ModuleInfo entry
(module_inputs_torch_nn_LSTM: 2-layer LSTMs over bias x batch_first x bidirectional x proj_size,
unbatched inputs with and without (h0, c0), each with a batched reference; and
module_error_inputs_torch_nn_RNN_GRU) for both classes, on the CPU.

Upstream test -> here: test_forward, test_factory_kwargs, test_repr, test_save_load (with the older
test_pickle), test_non_contiguous_tensors, test_grad, test_gradgrad, test_memory_format,
test_if_train_and_eval_modes_differ, test_device_ctx_init, test_errors, test_to, test_to_empty.
Not here: test_cpu_gpu_parity and test_multiple_device_transfer (CUDA only), test_check_inplace
(LSTM has no inplace argument). TestModule's precision and rel_tol (1e-5) are the overrides of
every comparison, as in upstream.
"""

from itertools import product

import pytest
import torch
from torch.testing._utils import freeze_rng_state
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from upstream_common import (LSTM_INFO, assert_equal, build, common_modules, each_class, leaves,
                             lstm_error_inputs, lstm_module_inputs, one_intra_op_thread)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_intra_op_thread()


# TestModule.precision / rel_tol: every assertEqual of the class is raised to these.
OVERRIDE = (1e-5, 1e-5)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
# LSTM's ModuleInfo has train_and_eval_differ=True: @modules runs each test in both modes.
MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


def describe(module_input):
    kwargs = module_input.constructor_input.kwargs
    with_hx = len(module_input.forward_input.args) > 1
    return f"LSTM({kwargs}), {'with' if with_hx else 'without'} hx"


def assert_params_and_buffers_are(module, device, dtype):
    device = torch.device(device)
    for kind, items in (("Parameter", module.named_parameters()), ("Buffer", module.named_buffers())):
        for name, item in items:
            assert item.device == device, f"{kind} {name} is on {item.device}, expected {device}"
            if item.dtype.is_floating_point:
                assert item.dtype == dtype, f"{kind} {name} is {item.dtype}, expected {dtype}"


@each_class
@DTYPES
@MODES
def test_forward(cls, dtype, training):
    to_dtype = {torch.float32: "float", torch.float64: "double"}[dtype]
    for mi in lstm_module_inputs(dtype, training=training):
        with freeze_rng_state():
            m = build(cls, mi, dtype, training)
            args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
            outputs = m(*args, **kwargs)
            # the unbatched call against the same call with a batch of one
            assert_equal(outputs, mi.reference_fn(m, *args, **kwargs), override=OVERRIDE, where=describe(mi))
            getattr(m, to_dtype)()
            m(*args, **kwargs)
            assert_params_and_buffers_are(m, "cpu", dtype)


@each_class
@DTYPES
@MODES
def test_factory_kwargs(cls, dtype, training):
    for mi in lstm_module_inputs(dtype, training=training):
        args, kwargs = mi.constructor_input.args, dict(mi.constructor_input.kwargs)
        assert list(cls(*args, **kwargs).parameters()), "the module creates parameters"
        kwargs.update(device="cpu", dtype=dtype)
        m = cls(*args, **kwargs)
        m.train(training)
        assert_params_and_buffers_are(m, "cpu", dtype)


@each_class
@DTYPES
@MODES
def test_repr(cls, dtype, training):
    for mi in lstm_module_inputs(dtype, training=training):
        m = build(cls, mi, dtype, training)
        m.__repr__()
        str(m)


def _saved_and_loaded(obj, weights_only):
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=weights_only)


@each_class
@DTYPES
@MODES
def test_save_load(cls, dtype, training):
    """Upstream test_save_load (and the older test_pickle): a saved and loaded module gives the same
    output; a saved state_dict loads back equal, also with weights_only=True."""
    for mi in lstm_module_inputs(dtype, training=training):
        with freeze_rng_state():
            m = build(cls, mi, dtype, training)
            sd = m.state_dict()
            args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
            output = m(*args, **kwargs)
            m_copy = _saved_and_loaded(m, weights_only=False)
            assert_equal(m_copy(*args, **kwargs), output, override=OVERRIDE, where=describe(mi))
            assert_equal(_saved_and_loaded(sd, weights_only=False), sd, override=OVERRIDE)
            assert_equal(_saved_and_loaded(sd, weights_only=True), sd, override=OVERRIDE)


def _make_non_contiguous(obj):
    def non_contiguous(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
        out.requires_grad = t.requires_grad
        return out
    return tree_map(non_contiguous, obj)


def _backward_each(outputs, grad_outputs):
    for o, g in zip(leaves(outputs), torch.utils._pytree.tree_leaves(grad_outputs)):
        if o.requires_grad:
            o.backward(g, retain_graph=True)


def _input_grads(obj):
    return [t.grad for t in leaves(obj) if t.requires_grad]


def _zero_grads(tensors):
    for t in tensors:
        t.grad = None


def _check_non_contiguous(m, mi):
    inputs = (mi.forward_input.args, mi.forward_input.kwargs)
    with freeze_rng_state():
        default_output = m(*inputs[0], **inputs[1])
        grad_output = tree_map(lambda o: o.clone().detach_().normal_() if o.requires_grad else None,
                               default_output)
        _backward_each(default_output, grad_output)
    default_input_grads = [g.clone() for g in _input_grads(inputs)]
    default_param_grads = [p.grad.clone() for p in m.parameters()]
    nc_inputs, nc_grad_output = _make_non_contiguous(inputs), _make_non_contiguous(grad_output)
    for (in_args, in_kwargs), g_out in product([inputs, nc_inputs], [grad_output, nc_grad_output]):
        _zero_grads(leaves((in_args, in_kwargs)) + list(m.parameters()))
        with freeze_rng_state():
            out = m(*in_args, **in_kwargs)
            _backward_each(out, g_out)
        where = describe(mi)
        assert_equal(out, default_output, override=OVERRIDE, where=f"{where}: output")
        assert_equal(_input_grads((in_args, in_kwargs)), default_input_grads, atol=1e-4, rtol=0,
                     override=OVERRIDE, where=f"{where}: input grads")
        assert_equal([p.grad for p in m.parameters()], default_param_grads, override=OVERRIDE,
                     where=f"{where}: parameter grads")


@each_class
@DTYPES
@MODES
def test_non_contiguous_tensors(cls, dtype, training):
    torch.manual_seed(0)
    for mi in lstm_module_inputs(dtype, requires_grad=True, training=training):
        _check_non_contiguous(build(cls, mi, dtype, training), mi)


def _gradcheck_fn(m, input_args):
    """upstream's fn_to_gradcheck: inputs and parameters in, the output's tensors out."""
    def fn(spec):
        def call(*flat):
            new_args = tree_unflatten(list(flat), spec)[:len(input_args)]
            with freeze_rng_state():
                return leaves(m(*new_args))
        return call
    return fn


def _check_gradients(m, mi, check, partials):
    """The total derivative over inputs and parameters; with `partials` (True: every parameter; a
    string: the parameters whose names end with it), then each of those parameters' alone (the
    inputs stay differentiable), as upstream's _test_gradients_helper."""
    input_args, params = mi.forward_input.args, tuple(m.parameters())
    make = _gradcheck_fn(m, input_args)
    flat, spec = tree_flatten(input_args + params)
    kwargs = dict(nondet_tol=0.0, check_batched_grad=True, fast_mode=True)  # common_utils' defaults
    assert check(make(spec), flat, **kwargs), describe(mi)
    if not partials:
        return
    for p in params:
        p.requires_grad_(False)
    chosen = [p for name, p in m.named_parameters() if partials is True or name.endswith(partials)]
    assert chosen, partials
    for p in chosen:
        p.requires_grad_(True)
        flat, spec = tree_flatten(input_args + params)
        assert check(make(spec), flat, **kwargs), describe(mi)
        p.requires_grad_(False)


def _full_lstm_input(mi):
    """The richest inputs (bias, bidirectional, projections, with hx): every parameter kind."""
    k = mi.constructor_input.kwargs
    return k["bias"] and k["bidirectional"] and k["proj_size"] > 0 and not k["batch_first"]


@pytest.mark.slow
@each_class
@MODES
def test_grad(cls, training):
    """gradcheck (float64) of every module input's total derivative; the per-parameter partial
    derivatives for the inputs that have every parameter kind (upstream checks them for all
    inputs, which costs minutes here)."""
    for mi in lstm_module_inputs(torch.float64, requires_grad=True, training=training):
        m = build(cls, mi, torch.float64, training)
        _check_gradients(m, mi, torch.autograd.gradcheck, partials=_full_lstm_input(mi))


# (bias, bidirectional, proj_size) of the time-major inputs with (h0, c0) that gradgrad checks: a
# half fraction of the 2x2x2 design in training mode (each setting on and off twice), its two
# extremes in eval mode.
GRADGRAD_TRAIN = {(False, False, 0), (True, True, 2), (True, False, 0), (False, True, 2)}
GRADGRAD_EVAL = {(False, False, 0), (True, True, 2)}


def _gradgrad_subset(mi, training):
    k = mi.constructor_input.kwargs
    if k["batch_first"] or len(mi.forward_input.args) < 2:
        return False
    return (k["bias"], k["bidirectional"], k["proj_size"]) in (GRADGRAD_TRAIN if training else GRADGRAD_EVAL)


@pytest.mark.slow
@each_class
@MODES
def test_gradgrad(cls, training):
    """gradgradcheck (float64) of the total derivative for a subset of the module inputs (time-major
    with (h0, c0): GRADGRAD_TRAIN / GRADGRAD_EVAL), and in training mode the partial derivatives of
    the last layer's reverse-direction parameters (one of each kind) for the richest input.
    Upstream checks every input and every parameter: several minutes on this machine."""
    for mi in lstm_module_inputs(torch.float64, requires_grad=True, training=training):
        if not _gradgrad_subset(mi, training):
            continue
        m = build(cls, mi, torch.float64, training)
        partials = "_l1_reverse" if training and _full_lstm_input(mi) else None
        _check_gradients(m, mi, torch.autograd.gradgradcheck, partials=partials)


def _to_memory_format(obj, memory_format):
    return tree_map(lambda t: t.clone().to(memory_format=memory_format).detach().requires_grad_(t.requires_grad)
                    if isinstance(t, torch.Tensor) else t, obj)


def _diff(tensors):
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]


def _check_memory_formats(m, mi, training):
    args = mi.forward_input.args
    desired = m(*args)
    ref_outputs = _diff(leaves(desired))
    if training:
        ref_grad_outputs = [torch.rand_like(t) for t in ref_outputs]
        ref_grads = torch.autograd.grad(ref_outputs, _diff(leaves((args, list(m.parameters())))),
                                        ref_grad_outputs)
    # 2-D inputs: upstream's formats are contiguous_format for the input and
    # preserve_format / contiguous_format for the module.
    d_args = _to_memory_format(args, torch.contiguous_format)
    for module_format in (torch.preserve_format, torch.contiguous_format):
        m.to(memory_format=module_format)
        outputs = m(*d_args)
        if module_format != torch.contiguous_format:
            assert_equal(outputs, desired, override=OVERRIDE, where=describe(mi))
        assert all(o.is_contiguous() for o in leaves(outputs)), describe(mi)
        if training:
            grads = torch.autograd.grad(_diff(leaves(outputs)), _diff(leaves((d_args, list(m.parameters())))),
                                        [g.clone() for g in ref_grad_outputs])
            if module_format != torch.contiguous_format:
                assert_equal(list(grads), list(ref_grads), override=OVERRIDE, where=describe(mi))
            assert all(g.is_contiguous() for g in grads), describe(mi)


@each_class
@DTYPES
@MODES
def test_memory_format(cls, dtype, training):
    for mi in lstm_module_inputs(dtype, requires_grad=True, training=training):
        with freeze_rng_state():
            _check_memory_formats(build(cls, mi, dtype, training), mi, training)


@each_class
@DTYPES
def test_if_train_and_eval_modes_differ(cls, dtype):
    """Forward without the `training` attribute either works or names it (train_only in upstream);
    naming it is allowed only because the entry says train_and_eval_differ."""
    for mi in lstm_module_inputs(dtype, training=True):
        m = build(cls, mi, dtype, True)
        delattr(m, "training")
        try:
            m(*mi.forward_input.args, **mi.forward_input.kwargs)
        except AttributeError as e:
            if "'training'" not in str(e):
                raise
            assert LSTM_INFO.train_and_eval_differ


def _assert_same_metadata(meta, real, where):
    assert meta.is_meta, where
    for attr in ("shape", "dtype", "layout", "requires_grad", "is_leaf", "ndim"):
        assert getattr(meta, attr) == getattr(real, attr), f"{where}: {attr}"
    assert meta.stride() == real.stride() and meta.storage_offset() == real.storage_offset(), where
    assert type(meta) is type(real), where


@each_class
@DTYPES
@MODES
def test_device_ctx_init(cls, dtype, training):
    """Built under `with torch.device('meta')`: parameters on meta with the CPU build's metadata."""
    module_inputs = lstm_module_inputs(dtype, training=training)
    with torch.device("meta"):
        meta_inputs = lstm_module_inputs(dtype, training=training, device=None)
    for mi, mi_meta in zip(module_inputs, meta_inputs):
        m_cpu = build(cls, mi)
        with torch.device("meta"):
            m = build(cls, mi_meta)
        pairs = list(zip(m.named_parameters(), m_cpu.parameters())) + list(zip(m.named_buffers(), m_cpu.buffers()))
        assert len(pairs) == len(list(m_cpu.parameters())) + len(list(m_cpu.buffers()))
        for (name, p_meta), p_cpu in pairs:
            _assert_same_metadata(p_meta, p_cpu, f"{describe(mi)}: {name}")


ERROR_INPUTS = lstm_error_inputs(torch.float32)


@each_class
@DTYPES
@MODES
@pytest.mark.parametrize("index", range(len(ERROR_INPUTS)), ids=[e.error_regex[:40] for e in ERROR_INPUTS])
def test_errors(cls, dtype, training, index):
    error_input = lstm_error_inputs(dtype, training=training)[index]
    module_input = error_input.module_error_input
    c = module_input.constructor_input
    if error_input.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            cls(*c.args, **c.kwargs)
    else:
        assert error_input.error_on == common_modules.ModuleErrorEnum.FORWARD_ERROR
        m = cls(*c.args, **c.kwargs)
        f = module_input.forward_input
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            m(*f.args, **f.kwargs)


@pytest.fixture
def swap_flag():
    """Restores torch.__future__'s swap flag (upstream: wrapSwapTensorsTest)."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    yield torch.__future__.set_swap_module_params_on_conversion
    torch.__future__.set_swap_module_params_on_conversion(before)


def _to_by_hand(m, set_grad):
    """Parameters replaced by fresh float32 CPU ones (not through module.to(), which is under test)."""
    for name, p in list(m.named_parameters(recurse=False)):
        new_p = torch.nn.Parameter(p.detach().clone().to("cpu", torch.float32))
        setattr(m, name, new_p)
        if set_grad:
            new_p.grad = torch.randn_like(new_p)


def _ids(m, grads=False):
    tensors = [p.grad if grads else p for p in m.parameters()]
    return [id(t) for t in tensors], [t._cdata for t in tensors]


def _check_to_step(m, dtype, swap, set_grad, grads_unchanged):
    p_ids, p_cdatas = _ids(m)
    if set_grad:
        g_ids, g_cdatas = _ids(m, grads=True)
    m.to(device="cpu", dtype=dtype)
    assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
    assert all(p.device.type == "cpu" and p.dtype == dtype for p in m.parameters())
    ids_after, cdatas_after = _ids(m)
    assert ids_after == p_ids
    if set_grad:
        assert all(p.grad.device.type == "cpu" and p.grad.dtype == dtype for p in m.parameters())
        g_ids_after, g_cdatas_after = _ids(m, grads=True)
    if swap:  # same Python objects, swapped contents
        assert all(a != b for a, b in zip(p_cdatas, cdatas_after))
        if set_grad:
            assert all((a == b) == grads_unchanged for a, b in zip(g_cdatas, g_cdatas_after))
    else:  # .data set in place
        assert cdatas_after == p_cdatas
        if set_grad:
            assert g_cdatas_after == g_cdatas and g_ids_after == g_ids


@each_class
@MODES
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "noswap"])
@pytest.mark.parametrize("set_grad", [True, False], ids=["grad", "nograd"])
def test_to(cls, training, swap, set_grad, swap_flag):
    swap_flag(swap)
    for mi in lstm_module_inputs(torch.float32, training=training):
        m = build(cls, mi)
        _to_by_hand(m, set_grad)
        if swap and not set_grad:  # .to() after a forward and backward, with swapping
            out = m(*mi.forward_input.args, **mi.forward_input.kwargs)
            out[0].sum().backward()
            m.to(dtype=torch.half)
            m.to(dtype=torch.float32)
        previous = torch.float32
        for dtype in LSTM_INFO.dtypes:  # float32, float64 on the CPU
            _check_to_step(m, dtype, swap, set_grad, grads_unchanged=dtype == previous)
            previous = dtype


@each_class
@MODES
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "noswap"])
def test_to_empty(cls, training, swap, swap_flag):
    with torch.device("meta"):
        module_inputs = lstm_module_inputs(torch.float32, training=training, device=None)
    swap_flag(swap)
    for mi in module_inputs:
        with torch.device("meta"):
            m = build(cls, mi)
        p_ids, p_cdatas = _ids(m)
        m.to_empty(device=torch.device("cpu"))
        assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())
        assert all(p.device == torch.device("cpu") and p.dtype == torch.float32 for p in m.parameters())
        ids_after, cdatas_after = _ids(m)
        assert all(a != b for a, b in zip(p_cdatas, cdatas_after))
        if swap:
            assert ids_after == p_ids
        else:
            assert all(a != b for a, b in zip(p_ids, ids_after))
