"""ARITHMETIC.md rules 6 and 7: the canonical exp/sigmoid/tanh within 2 ulp over the whole float32
range, Philox4x32-10 against Random123's known-answer vectors, and both CPU kernel builds agreeing."""

import numpy as np
import pytest
import torch

import detlstm
from detlstm._ops import philox4x32_10

SPECIALS = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, -0.5, 0.55, -0.55,
     np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny,
     -np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal,
     -np.finfo(np.float32).smallest_subnormal, 88.72283, 88.72284, -87.33655, -103.27893,
     -103.97208, -104.0, 100.0, 100.5, -110.0, -110.5, 9.01, -9.01, 44.0, -44.0],
    dtype=np.float32)


def _ulp_run(center, n):
    """The n float32 values around `center`, consecutive bit patterns (one sign)."""
    c = int(np.float32(center).view(np.uint32))
    return np.arange(c - n // 2, c + n // 2, dtype=np.uint32).view(np.float32)


def _inputs(n_random=10_000_000):
    g = np.random.default_rng(20261122)
    # uniform over bit patterns = spread over every binade of the whole range, both signs
    bits = g.integers(0, 2**32, size=n_random, dtype=np.uint64).astype(np.uint32)
    spread = bits.view(np.float32)
    dense = g.uniform(-30.0, 30.0, 2_000_000).astype(np.float32)  # where the functions bend
    around_zero = g.uniform(-1.0, 1.0, 1_000_000).astype(np.float32)
    # The vector builds' shorter exp road runs where all of a vector's lanes have |x| <= 86
    # (canonical_math.h): whole vectors of |x| up to 90, and runs of consecutive values across the
    # edge for exp and sigmoid (86) and for tanh (2|x| <= 86)
    wide = g.uniform(-90.0, 90.0, 1_000_000).astype(np.float32)
    edges = [_ulp_run(v, 4096) for v in (86.0, -86.0, 43.0, -43.0)]
    return np.concatenate([SPECIALS, spread, dense, around_zero, wide] + edges)


def _ordered(a):
    """float32 -> integers that count ulps (monotone across zero)."""
    i = a.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _reference(fn, x64):
    with np.errstate(all="ignore"):
        if fn == "exp":
            return np.exp(x64)
        if fn == "tanh":
            return np.tanh(x64)
        e = np.exp(-np.abs(x64))
        return np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@pytest.fixture(scope="module")
def inputs():
    return _inputs()


@pytest.mark.parametrize("fn", ["exp", "sigmoid", "tanh"])
def test_within_two_ulp_of_correctly_rounded(fn, inputs):
    y = detlstm.canonical_unary(torch.from_numpy(inputs), fn).numpy()
    with np.errstate(all="ignore"):
        ref = _reference(fn, inputs.astype(np.float64)).astype(np.float32)
    nan_in = np.isnan(inputs)
    assert np.all(np.isnan(y[nan_in])), "NaN in must give NaN out"
    assert not np.any(np.isnan(y[~nan_in])), "finite or infinite input gave NaN"
    finite = ~nan_in
    ulps = np.abs(_ordered(y[finite]) - _ordered(ref[finite]))
    worst = int(ulps.argmax())
    assert ulps.max() <= 2, (f"{fn}: {ulps.max()} ulp at x={inputs[finite][worst]!r}: "
                            f"{y[finite][worst]!r} vs {ref[finite][worst]!r}")
    # saturation as the true functions: exp overflows to inf and underflows to 0, tanh and sigmoid
    # reach their limits exactly
    if fn == "exp":
        assert y[inputs == np.inf][0] == np.inf and y[inputs == -np.inf][0] == 0.0
        assert y[inputs == np.float32(100.0)][0] == np.inf
    else:
        lo = 0.0 if fn == "sigmoid" else -1.0
        assert y[inputs == np.inf][0] == 1.0 and y[inputs == -np.inf][0] == lo


def test_tanh_keeps_signed_zero_and_subnormals():
    x = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40], dtype=torch.float32)
    y = detlstm.canonical_unary(x, "tanh")
    assert y.numpy().tobytes() == x.numpy().tobytes()
    # sigmoid's subnormal tail is kept, not flushed
    s = detlstm.canonical_unary(torch.tensor([-100.0]), "sigmoid")
    assert 0 < s.item() < 1.2e-38


@pytest.mark.parametrize(
    "counter,key,expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32_10(torch.tensor([counter], dtype=torch.int64), key[0], key[1])
    assert tuple(out[0].tolist()) == expected


def test_cpu_builds_agree_bitwise():
    """Every vector build this processor runs (AVX-512, AVX2) produces the portable build's bits
    (math and whole LSTM)."""
    from detlstm._info import cpu_variants

    variants = cpu_variants()[2]
    if len(variants) == 1:
        pytest.skip("this processor runs only the portable build")
    from helpers import assert_results_equal, forward_backward, make_pair

    x = torch.from_numpy(_inputs(200_000))
    _, model = make_pair(19, 37, num_layers=2, bidirectional=True, dropout=0.5)
    _, projected = make_pair(19, 37, num_layers=2, bidirectional=True, dropout=0.5, proj_size=5)
    model.train()
    projected.train()
    # sums longer than the CPU GEMM's 256-term reduction slices, with outputs wide enough for the
    # vector kernel: 300 inputs (the input projection), 24 x 16 steps with 330 valid rows (the
    # weight gradients, the column-mode products), 4H = 80 gate columns
    _, wide = make_pair(300, 20, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(3)
    inp = torch.randn(9, 7, 19, generator=g)
    wide_inp = torch.randn(24, 16, 300, generator=g)
    wide_lengths = [24] * 12 + [20, 9, 4, 1]
    results = {}
    try:
        for variant in variants:
            detlstm.set_cpu_variant(variant)
            math = [detlstm.canonical_unary(x, fn) for fn in ("exp", "sigmoid", "tanh")]
            results[variant] = math
            for m in (model, projected):
                results[variant] += forward_backward(m, "lengths", inp, None, [9, 3, 7, 1, 9, 4, 6],
                                                     loss_seed=123, dropout_seed=11)
            results[variant] += forward_backward(wide, "lengths", wide_inp, None, wide_lengths,
                                                 loss_seed=5)
    finally:
        detlstm.set_cpu_variant("default")
    for variant in variants[1:]:
        assert_results_equal(results[variant], results["generic"], f"{variant} vs generic")


def test_cpu_variant_names_and_errors():
    """'avx512' is offered where the processor has it, refused with a clear error where not; an
    unknown name lists the valid ones."""
    from detlstm._info import cpu_variants

    current, best, variants = cpu_variants()
    assert best == variants[-1] and current in variants
    with pytest.raises(RuntimeError, match="expected 'generic', 'avx2', 'avx512' or 'default'"):
        detlstm.set_cpu_variant("sse9")
    if "avx512" not in variants:
        with pytest.raises(RuntimeError, match="lacks AVX-512"):
            detlstm.set_cpu_variant("avx512")
    assert detlstm.set_cpu_variant(current) == current
