"""PyTorch's benchmarks/fastrnns/test.py re-aimed at detlstm.LSTM: the experiment (the class under
test) against the control (torch.nn.LSTM, upstream's pytorch_lstm_creator) at fastrnns' default
shape (seqLength 100, numLayers 1, inputSize 512, hiddenSize 512, miniBatch 64, seed 17), on the
CPU, with its tolerance: every element within 1e-3 (its assertEqual threshold).

test_rnns: padded input; test_vl_py: its variable-length variant (64 sequences of lengths drawn
from [30, 100), packed unsorted, padded back), where upstream's experiment is a Python loop and
ours is the class under test. Each checks upstream's preconditions (same inputs, same parameters
from the same seed), the outputs, then the parameter gradients of a backward from the output with
randn_like gradients drawn at the seed.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

from upstream_common import each_class, one_intra_op_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    yield from one_intra_op_thread()


SHAPE = dict(seqLength=100, numLayers=1, inputSize=512, hiddenSize=512, miniBatch=64)
SEED = 17
THRESHOLD = 1e-3


def assert_within(tensor, expected, threshold=THRESHOLD, where="value"):
    """fastrnns' assertEqual: lists and tuples elementwise, tensors by their largest difference."""
    if isinstance(tensor, (list, tuple)):
        assert len(tensor) == len(expected), where
        for k, (t, e) in enumerate(zip(tensor, expected)):
            assert_within(t, e, threshold, f"{where}[{k}]")
    else:
        assert tensor.shape == expected.shape, f"{where}: {tuple(tensor.shape)} vs {tuple(expected.shape)}"
        diff = (tensor - expected).abs().max().item()
        assert diff <= threshold, f"{where}: largest difference {diff:.3e} > {threshold}"


def lstm_model(cls):
    """fastrnns' lstm_inputs with return_module: (inputs, flat parameter list, module)."""
    torch.manual_seed(SEED)
    t, b, i, h, layers = (SHAPE[k] for k in ("seqLength", "miniBatch", "inputSize", "hiddenSize", "numLayers"))
    x = torch.randn(t, b, i)
    hx = torch.randn(layers, b, h)
    cx = torch.randn(layers, b, h)
    module = cls(i, h, layers, dropout=0.0)
    return [x, (hx, cx)], [w for layer in module.all_weights for w in layer], module


def varlen_model(cls):
    """fastrnns' varlen_lstm_inputs (minlen 30, maxlen 100) with its packing forward."""
    torch.manual_seed(SEED)
    b, i, h, layers = (SHAPE[k] for k in ("miniBatch", "inputSize", "hiddenSize", "numLayers"))
    lengths = torch.randint(low=30, high=100, size=[b], dtype=torch.long)
    sequences = [torch.randn(length, i) for length in lengths]
    hx = torch.randn(layers, b, h)
    cx = torch.randn(layers, b, h)
    module = cls(i, h, layers)

    def forward(sequences, hidden):
        packed = rnn_utils.pack_sequence(sequences, enforce_sorted=False)
        out, new_hidden = module(packed, hidden)
        padded, _ = rnn_utils.pad_packed_sequence(out)
        return padded, new_hidden
    return [sequences, (hx, cx)], [w for layer in module.all_weights for w in layer], forward


def backward(outputs, params):
    """fastrnns' lstm_backward_setup and simple_backward: output.backward(randn_like at the seed)."""
    output = outputs[0]
    torch.manual_seed(SEED)
    output.backward(torch.randn_like(output))
    return [p.grad for p in params]


_CONTROL = {}


def control_run(make):
    """The control's inputs, parameters, outputs and gradients, computed once per model kind (both
    parametrizations compare with the same nn.LSTM run)."""
    if make not in _CONTROL:
        inputs, params, control = make(nn.LSTM)
        outputs = control(*inputs)
        grads = backward(outputs, params)
        _CONTROL[make] = (inputs, params, [o.detach() if isinstance(o, torch.Tensor) else tuple(t.detach() for t in o)
                                           for o in outputs], grads)
    return _CONTROL[make]


def compare(make, cls):
    control_inputs, control_params, control_outputs, control_grads = control_run(make)
    inputs, params, experiment = make(cls)
    assert_within(inputs, control_inputs, where="inputs (precondition)")
    assert_within(params, control_params, where="params (precondition)")
    outputs = experiment(*inputs)
    assert_within(outputs, control_outputs, where="outputs")
    assert_within(backward(outputs, params), control_grads, where="grads")


@pytest.mark.slow
@each_class
def test_rnns(cls):
    compare(lstm_model, cls)


@pytest.mark.slow
@each_class
def test_vl_py(cls):
    compare(varlen_model, cls)
