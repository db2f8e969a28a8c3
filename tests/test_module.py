"""Drop-in details: parameters, initialisation, state_dict both ways, repr, all_weights, convert,
reverse_padded, deterministic-algorithms mode."""

import warnings

import pytest
import torch
from torch import nn

import detlstm
from helpers import assert_bitwise_equal, make_pair


@pytest.mark.parametrize("layers,bidir,bias", [(1, False, True), (3, True, False), (2, True, True)])
def test_parameters_match_nn_lstm(layers, bidir, bias):
    torch.manual_seed(3)
    ref = nn.LSTM(5, 7, num_layers=layers, bidirectional=bidir, bias=bias)
    torch.manual_seed(3)
    ours = detlstm.LSTM(5, 7, num_layers=layers, bidirectional=bidir, bias=bias)
    ref_params, our_params = list(ref.named_parameters()), list(ours.named_parameters())
    assert [n for n, _ in ref_params] == [n for n, _ in our_params]
    for (name, a), (_, b) in zip(ref_params, our_params):
        assert a.shape == b.shape, name
        assert_bitwise_equal(a, b, f"initial {name}")  # same seed, same initialisation
    assert ours._flat_weights_names == ref._flat_weights_names
    assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
        [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
    assert repr(ours).replace("detlstm.", "").split("(", 1)[1] == repr(ref).split("(", 1)[1]


def test_extra_repr_lists_non_defaults():
    m = detlstm.LSTM(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True)
    assert m.extra_repr() == "3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True"


def test_state_dict_both_ways():
    ref, ours = make_pair(4, 6, num_layers=2, bidirectional=True)
    back = nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    back.load_state_dict(ours.state_dict())
    for k, v in ref.state_dict().items():
        assert_bitwise_equal(v, back.state_dict()[k], k)
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_flatten_parameters_is_harmless():
    _, m = make_pair(3, 4)
    m.flatten_parameters()
    x = torch.randn(2, 1, 3)
    assert m(x)[0].shape == (2, 1, 4)


def test_float64_module_and_to():
    ref, ours = make_pair(3, 5, num_layers=2, bidirectional=True)
    ours = ours.double()
    ref = ref.double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-9, atol=1e-12)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.enc = nn.Sequential(nn.Identity())
        self.rnn = nn.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.inner = nn.ModuleDict({"lstm": nn.LSTM(10, 3)})
        self.head = nn.Linear(10, 2)


def test_convert_replaces_every_lstm_and_keeps_weights():
    torch.manual_seed(0)
    model = Tagger()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 6, 4)
    ref_out = model.rnn(x)[0]
    same = detlstm.convert(model)
    assert same is model
    assert type(model.rnn) is detlstm.LSTM and type(model.inner["lstm"]) is detlstm.LSTM
    assert model.rnn.batch_first and model.rnn.bidirectional and model.rnn.num_layers == 2
    assert not model.rnn.training
    for k, v in model.state_dict().items():
        assert_bitwise_equal(v, before[k], k)
    torch.testing.assert_close(model.rnn(x)[0], ref_out, rtol=2e-4, atol=2e-5)
    assert type(detlstm.convert(nn.LSTM(2, 3))) is detlstm.LSTM


def test_convert_keeps_the_same_objects_so_nothing_built_before_is_cut_off():
    """convert works in place: an optimizer built before still trains the LSTM, a frozen weight stays
    frozen, gradients already there and hooks (module and parameter) stay, and an LSTM reachable
    under two names (or an alias attribute) stays one module."""
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.LSTM(4, 5, num_layers=2))
            self.rnn = self.encoder[0]  # the same LSTM under a second name

    model = Model()
    lstm = model.rnn
    lstm.weight_hh_l1.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    calls = []
    lstm.register_forward_hook(lambda *args: calls.append("forward"))
    lstm.weight_ih_l0.register_hook(lambda g: calls.append("grad") or g)
    lstm.weight_ih_l0.grad = torch.ones_like(lstm.weight_ih_l0)
    frozen = lstm.weight_hh_l1.detach().clone()
    before = lstm.weight_ih_l0.detach().clone()
    assert detlstm.convert(model) is model
    assert model.rnn is model.encoder[0] is lstm and type(lstm) is detlstm.LSTM
    assert list(model.parameters()) == params and all(a is b for a, b in zip(model.parameters(), params))
    assert not lstm.weight_hh_l1.requires_grad and torch.equal(lstm.weight_ih_l0.grad, torch.ones(20, 4))
    lstm.weight_ih_l0.grad = None
    model.rnn(torch.randn(3, 2, 4))[0].sum().backward()
    opt.step()
    assert calls == ["forward", "grad"]
    assert not torch.equal(lstm.weight_ih_l0, before) and torch.equal(lstm.weight_hh_l1, frozen)


def test_convert_with_legacy_weight_norm_gives_nn_lstms_values():
    """torch.nn.utils.weight_norm (the hook form) keeps working: its hook recomputes the weight
    before every call, and the weight's gradient reaches g and v."""
    from torch.nn.utils import weight_norm

    x = torch.randn(3, 2, 4)
    torch.manual_seed(0)
    ref = weight_norm(nn.LSTM(4, 5), "weight_hh_l0")
    torch.manual_seed(0)
    ours = detlstm.convert(weight_norm(nn.LSTM(4, 5), "weight_hh_l0"))
    assert type(ours) is detlstm.LSTM
    ref(x)[0].sum().backward()
    ours(x)[0].sum().backward()
    torch.testing.assert_close(ours.weight_hh_l0_g.grad, ref.weight_hh_l0_g.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_hh_l0_v.grad, ref.weight_hh_l0_v.grad, rtol=1e-5, atol=1e-6)


class _DoublingLSTM(nn.LSTM):
    def forward(self, *args, **kwargs):
        out, state = super().forward(*args, **kwargs)
        return out * 2, state


@pytest.mark.parametrize("odd", ["subclass", "parametrized", "complex"])
def test_convert_refuses_what_it_would_change_before_changing_anything(odd):
    from torch.nn.utils import parametrizations

    plain = nn.LSTM(4, 5)
    other = {"subclass": lambda: _DoublingLSTM(4, 5),
             "parametrized": lambda: parametrizations.weight_norm(nn.LSTM(4, 5), "weight_hh_l0"),
             "complex": lambda: nn.LSTM(4, 5).to(torch.complex64)}[odd]()
    model = nn.Sequential(plain, other)
    error = ValueError if odd == "complex" else TypeError
    with pytest.raises(error, match="detlstm.convert: the module at '1'"):
        detlstm.convert(model)
    assert type(model[0]) is nn.LSTM and type(model[1]) is type(other)


def test_reverse_padded():
    x = torch.arange(4 * 3, dtype=torch.float32).view(4, 3, 1).requires_grad_()
    lengths = [4, 1, 3]
    r = detlstm.reverse_padded(x, lengths)
    assert r[:, 0, 0].tolist() == [9, 6, 3, 0]
    assert r[:, 1, 0].tolist() == [1, 4, 7, 10]  # length 1: unchanged, padding stays in place
    assert r[:, 2, 0].tolist() == [8, 5, 2, 11]
    rb = detlstm.reverse_padded(x.transpose(0, 1), lengths, batch_first=True)
    assert torch.equal(rb, r.transpose(0, 1))
    assert torch.equal(detlstm.reverse_padded(r, lengths), x)
    r.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_deterministic_algorithms_mode_is_silent():
    _, m = make_pair(4, 6, num_layers=2, bidirectional=True, dropout=0.5)
    m.train()
    x = torch.randn(5, 3, 4, requires_grad=True)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out, (h, c) = m(x, lengths=[5, 2, 4])
            (out.sum() + h.sum() + c.sum()).backward()
            packed = nn.utils.rnn.pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False)
            m(packed)[0].data.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert x.grad is not None
