"""Shared pieces of the upstream-derived tests (tests/test_upstream_*.py): our re-aimed versions of
PyTorch's own LSTM tests (test/test_modules.py on the ModuleInfo entry of torch.nn.LSTM,
test/test_nn.py's RNN tests, benchmarks/fastrnns/test.py), run for torch.nn.LSTM (the control) and
detlstm.LSTM alike.

The module inputs and error inputs come from torch's installed test library
(torch.testing._internal.common_modules); the comparisons are ours, with upstream's tolerances:
`assert_equal` follows TestCase.assertEqual (each dtype's default rtol/atol unless a test names its
own, both raised to a test class's `precision`/`rel_tol` overrides), `assert_not_equal` its negation.
"""

from collections.abc import Mapping, Sequence
from numbers import Number

import pytest
import torch
from torch import nn

import detlstm

CLASSES = (nn.LSTM, detlstm.LSTM)
CLASS_IDS = ("nn", "detlstm")
# Every upstream-derived test runs once per class: nn.LSTM is the control.
each_class = pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)


def _load_module_db():
    # Importing torch's test library freezes torch.backends flags for the whole process
    # (common_utils calls torch.backends.disable_global_flags()); undo that, so the other test
    # files of this pytest run keep the ordinary behaviour.
    frozen_before = torch.backends.flags_frozen()
    from torch.testing._internal import common_modules
    if not frozen_before and torch.backends.flags_frozen():
        # the flag lives in the globals of torch/backends/__init__.py (disable_global_flags' own)
        torch.backends.disable_global_flags.__globals__["__allow_nonbracketed_mutation_flag"] = True
        assert not torch.backends.flags_frozen()
    return common_modules


common_modules = _load_module_db()
LSTM_INFO = next(info for info in common_modules.module_db if info.module_cls is nn.LSTM)


def lstm_module_inputs(dtype, requires_grad=False, training=True, device="cpu"):
    """torch.nn.LSTM's ModuleInputs (module_inputs_torch_nn_LSTM) for one dtype and mode."""
    return LSTM_INFO.module_inputs_func(LSTM_INFO, device=device, dtype=dtype,
                                        requires_grad=requires_grad, training=training)


def lstm_error_inputs(dtype, training=True, device="cpu"):
    """torch.nn.LSTM's ErrorModuleInputs (module_error_inputs_torch_nn_RNN_GRU)."""
    return LSTM_INFO.module_error_inputs_func(LSTM_INFO, device=device, dtype=dtype,
                                              requires_grad=False, training=training)


def build(cls, module_input, dtype=None, training=None):
    """cls built from a ModuleInput's constructor arguments, moved like upstream (`.to(dtype)`)."""
    c = module_input.constructor_input
    m = cls(*c.args, **c.kwargs)
    if dtype is not None:
        m.to("cpu").to(dtype)
    if training is not None:
        m.train(training)
    return m


# torch.testing's default tolerances per dtype (rtol, atol), as TestCase.assertEqual uses them.
_DEFAULT_TOLERANCES = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def _tolerances(dtype, rtol, atol, override):
    if rtol is None and atol is None:
        rtol, atol = _DEFAULT_TOLERANCES.get(dtype, (0.0, 0.0))
    return max(rtol, override[0]), max(atol, override[1])


def _compare_tensors(a, b, rtol, atol, override, where):
    assert a.shape == b.shape, f"{where}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{where}: dtypes {a.dtype} vs {b.dtype}"
    r, t = _tolerances(a.dtype, rtol, atol, override)
    torch.testing.assert_close(a.detach().cpu(), b.detach().cpu(), rtol=r, atol=t, equal_nan=True,
                               check_device=False, msg=lambda m: f"{where}: {m}")


def assert_equal(actual, expected, *, rtol=None, atol=None, override=(0.0, 0.0), where="value"):
    """TestCase.assertEqual on tensors and nested sequences/mappings of them (lists and tuples
    alike, as upstream), numbers compared to tensors elementwise. override = (rel_tol, precision)."""
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            actual = torch.as_tensor(actual, dtype=expected.dtype)
        if not isinstance(expected, torch.Tensor):
            expected = torch.as_tensor(expected, dtype=actual.dtype)
        _compare_tensors(actual, expected, rtol, atol, override, where)
    elif isinstance(actual, Mapping) and isinstance(expected, Mapping):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} vs {list(expected)}"
        for k in actual:
            assert_equal(actual[k], expected[k], rtol=rtol, atol=atol, override=override, where=f"{where}[{k!r}]")
    elif isinstance(actual, Sequence) and isinstance(expected, Sequence) and not isinstance(actual, str):
        assert len(actual) == len(expected), f"{where}: lengths {len(actual)} vs {len(expected)}"
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_equal(a, e, rtol=rtol, atol=atol, override=override, where=f"{where}[{k}]")
    elif isinstance(actual, Number) and isinstance(expected, Number) and not isinstance(actual, bool):
        r, t = _tolerances(torch.float64, rtol, atol, override)
        assert abs(actual - expected) <= t + r * abs(expected), f"{where}: {actual} vs {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} vs {expected!r}"


def assert_not_equal(actual, expected, **kwargs):
    """TestCase.assertNotEqual: fails when assert_equal would pass."""
    try:
        assert_equal(actual, expected, **kwargs)
    except AssertionError:
        return
    raise AssertionError(f"{kwargs.get('where', 'value')}: equal within tolerance, expected a difference")


def leaves(obj):
    """The tensors of a nested output, in order (torch.utils._pytree.tree_leaves)."""
    return [t for t in torch.utils._pytree.tree_leaves(obj) if isinstance(t, torch.Tensor)]


def one_intra_op_thread():
    """For a module-scoped fixture: one intra-op thread while the module's tests run, the previous
    count restored after. On a 2-core machine shared with other work, OpenMP's spin-waiting made
    these tests 4-30x slower with two threads (nothing here depends on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transfer_weights(src, dst):
    """Copy every parameter of src into dst by name (both nn.LSTM-shaped)."""
    with torch.no_grad():
        for name, p in dst.named_parameters():
            p.copy_(dict(src.named_parameters())[name])
