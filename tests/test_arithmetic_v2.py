"""ARITHMETIC.md version 2, pinned bit for bit: the operators equal an exact Python reference
(tests/exact_reference.py) that performs each rounded operation of the contract one at a time.

The reference's summation shape is chosen by REF_VERSION: 2 (the contract, the default) or 1 (every
sum one chain, what the kernels did before version 2). DETLSTM_REF_VERSION=1 runs the same tests
against version 1 kernels (the chunked-rounding case then checks that the kernels show version 1's
value).
"""

import math
import os
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

import detlstm  # noqa: F401  (registers the operators)
import exact_reference as ref
from helpers import assert_bitwise_equal

REF_VERSION = int(os.environ.get("DETLSTM_REF_VERSION", "2"))
CHUNK = 64  # ARITHMETIC.md rule 3's chunk length

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _skip_cuda_float64(device, dtype):
    # The reference's float64 exp and tanh are the host libm's (what the CPU kernels call); CUDA's
    # float64 kernels call CUDA's, and ARITHMETIC.md promises cross-device bits for float32 only.
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 on CUDA uses CUDA's exp/tanh: not the host reference's (float32 only)")


# --------------------------------------------------------------------------------------------------
# The reference's own arithmetic: it must fail if its rounding were wrong
# --------------------------------------------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = 2.0 ** -149  # smallest subnormal


def _f32(x):
    with np.errstate(over="ignore"):
        return float(np.float32(x))  # numpy's float64 -> float32 conversion is correctly rounded


def _bits32(x):
    return int(np.array(x, dtype=np.float32).view(np.uint32))


def _bits64(x):
    return int(np.array(x, dtype=np.float64).view(np.uint64))


def _round32(x):
    return ref.round_to(x, ref.BINARY32)  # round_dyadic for nonzero finite x


def _same32(a, b):
    return _bits32(a) == _bits32(b)


def _random_doubles(rng, count):
    """Doubles over every float32 regime: normal, subnormal, below half the smallest subnormal,
    near and past the overflow threshold, with random low bits (so ties are rare here; the
    explicit tie tests below cover them)."""
    out = []
    for _ in range(count):
        e = rng.choice([rng.randint(-126, 127), rng.randint(-160, -126), rng.randint(120, 129)])
        m = 1.0 + rng.getrandbits(52) * 2.0 ** -52
        out.append(rng.choice([-1.0, 1.0]) * math.ldexp(m, e))
    return out


def _midpoints(rng, count):
    """Exact float32 midpoints (normal, subnormal, at the overflow threshold) and their double
    neighbours."""
    out = [F32_MAX + 2.0 ** 103, F32_TINY / 2, 3 * F32_TINY / 2, 2.0 ** -126 - F32_TINY / 2]
    for _ in range(count):
        e = rng.randint(-149, 127)
        q = max(e, -126) - 23  # last place
        m = rng.getrandbits(23) | (1 << 23) if e >= -126 else rng.getrandbits(max(1, e + 150))
        mid = math.ldexp(2 * m + 1, q - 1)
        if math.isfinite(mid):
            out.append(mid)
    out += [math.nextafter(x, math.inf) for x in list(out)] + [math.nextafter(x, -math.inf) for x in list(out)]
    return out + [-x for x in out]


def test_round_dyadic_matches_numpy_float32_conversion():
    rng = random.Random(1)
    values = _random_doubles(rng, 4000) + _midpoints(rng, 2000)
    values += [0.0, -0.0, F32_MAX, -F32_MAX, F32_TINY, -F32_TINY, 1e39, -1e39, 2.0 ** 128, 1.5 * 2.0 ** -150,
               2.0 ** -150, -(2.0 ** -150), 2.0 ** -151]
    bad = [x for x in values if not _same32(_round32(x), _f32(x))]
    assert not bad, f"{len(bad)} doubles round differently from numpy, e.g. {[x.hex() for x in bad[:5]]}"


def test_round_ties_to_even_subnormals_overflow():
    one_ulp = 2.0 ** -23
    assert _round32(1 + 2.0 ** -24) == 1.0  # tie, 1 is even
    assert _round32(1 + 3 * 2.0 ** -24) == 1 + 2 * one_ulp  # tie, up to even
    assert _round32(math.nextafter(1 + 2.0 ** -24, 2)) == 1 + one_ulp  # past the tie
    assert _round32(F32_TINY / 2) == 0.0 and _round32(-F32_TINY / 2) == 0.0  # tie to even: 0
    assert math.copysign(1, _round32(-F32_TINY / 2)) < 0  # a negative underflow is -0
    assert _round32(3 * F32_TINY / 2) == 2 * F32_TINY  # subnormal tie to even
    assert _round32(math.nextafter(F32_TINY / 2, 1)) == F32_TINY
    assert _round32(F32_MAX + 2.0 ** 103) == math.inf  # the overflow threshold is a tie: to inf
    assert _round32(math.nextafter(F32_MAX + 2.0 ** 103, 0)) == F32_MAX
    assert _round32(-1e39) == -math.inf


def test_round_fraction_is_nearest_even():
    """round_fraction on arbitrary rationals: binary64 against Python's correctly rounded int / int,
    binary32 against the definition (nearer than both float32 neighbours, ties to even)."""
    rng = random.Random(2)
    for _ in range(3000):
        num = rng.choice([-1, 1]) * rng.getrandbits(rng.randint(1, 200))
        den = rng.getrandbits(rng.randint(1, 200)) + 1
        shift = rng.randint(-1100, 1000)
        v = Fraction(num, den) * Fraction(2) ** shift
        try:
            expect64 = v.numerator / v.denominator
        except OverflowError:
            expect64 = math.copysign(math.inf, num)
        got64 = ref.round_fraction(v, ref.BINARY64)
        assert _bits64(got64) == _bits64(expect64) or (num == 0 and got64 == 0), (v, got64, expect64)
        v32 = Fraction(num, den) * Fraction(2) ** rng.randint(-170, 140)
        r = ref.round_fraction(v32, ref.BINARY32)
        threshold = Fraction(F32_MAX) + Fraction(2) ** 103  # ties at it go to inf
        if math.isinf(r):
            assert abs(v32) >= threshold
            continue
        assert abs(v32) < threshold
        assert _same32(r, _f32(r)), "not a float32"
        lo = float(np.nextafter(np.float32(r), np.float32(-np.inf)))
        hi = float(np.nextafter(np.float32(r), np.float32(np.inf)))
        err = abs(v32 - Fraction(r))
        for nb in (lo, hi):
            if math.isfinite(nb):
                other = abs(v32 - Fraction(nb))
                assert err < other or (err == other and _bits32(r) % 2 == 0), (v32, r, nb)
    # the dyadic and the rational paths agree
    for x in _random_doubles(rng, 500):
        assert _same32(ref.round_fraction(Fraction(x), ref.BINARY32), _round32(x))


def _exact_fma(a, b, c, fmt):
    return ref.round_fraction(Fraction(a) * Fraction(b) + Fraction(c), fmt)


def test_arith_float32_operations():
    ar = ref.Arith(torch.float32)
    rng = random.Random(3)

    def rnd():
        return _f32(rng.choice([-1, 1]) * math.ldexp(rng.random(), rng.randint(-140, 10)))

    for _ in range(3000):
        a, b, c = rnd(), rnd(), rnd()
        fa, fb = np.float32(a), np.float32(b)
        with np.errstate(all="ignore"):
            assert _same32(ar.add(a, b), float(fa + fb)), (a, b)
            assert _same32(ar.sub(a, b), float(fa - fb)), (a, b)
            assert _same32(ar.mul(a, b), float(fa * fb)), (a, b)
        r = ar.fma(a, b, c)
        assert _same32(r, _exact_fma(a, b, c, ref.BINARY32)) or (r == 0 and a * b + c == 0), (a, b, c)
    # double rounding: the exact value 1 + 2^-24 + 2^-70 lies just above the float32 midpoint
    # 1 + 2^-24; through binary64 it would land on the midpoint and round to even (1.0)
    a, b, c = 1 + 2.0 ** -23, 1 - 2.0 ** -24, 2.0 ** -47 + 2.0 ** -70
    assert _f32(a * b + c) == 1.0  # what double rounding gives
    assert ar.fma(a, b, c) == 1 + 2.0 ** -23
    # signed zeros (IEEE 754 round to nearest)
    neg = lambda x: math.copysign(1, x) < 0  # noqa: E731
    assert not neg(ar.add(1.5, -1.5)) and neg(ar.add(-0.0, -0.0)) and not neg(ar.add(0.0, -0.0))
    assert not neg(ar.fma(-1.0, 0.0, 0.0))  # a*b = -0, plus +0: +0
    assert neg(ar.fma(-1.0, 0.0, -0.0)) and neg(ar.fma(1.0, -0.0, -0.0))
    assert not neg(ar.fma(2.0, 3.0, -6.0))  # exact cancellation: +0
    assert neg(ar.mul(-F32_TINY, 0.5)) and ar.mul(-F32_TINY, 0.5) == 0  # underflow keeps the sign
    assert neg(ar.fma(-F32_TINY, 0.25, 0.0))
    assert ar.mul(F32_MAX, 2.0) == math.inf and ar.add(F32_MAX, F32_MAX) == math.inf


def test_arith_float64_fma():
    ar = ref.Arith(torch.float64)
    rng = random.Random(4)
    for _ in range(2000):
        a, b, c = (rng.choice([-1, 1]) * math.ldexp(rng.random(), rng.randint(-1000, 20)) for _ in range(3))
        assert _bits64(ar.fma(a, b, c)) == _bits64(_exact_fma(a, b, c, ref.BINARY64))
    # 1 + 2^-53 + 2^-150 is just above a binary64 midpoint: correctly rounded up, not to even
    a, b, c = 1 + 2.0 ** -52, 1 - 2.0 ** -53, 2.0 ** -105 + 2.0 ** -150
    assert a * b + c == 1.0 and ar.fma(a, b, c) == 1 + 2.0 ** -52


def test_chunked_sum_shape():
    """Rule 3 on a sum whose shapes round differently: 1 then 2^-24 terms."""
    ar = ref.Arith(torch.float32)
    xs = [1.0] + [2.0 ** -24] * 69
    assert ref.chain_sum(ar, 0.0, xs) == 1.0  # each 1 + 2^-24 ties back to 1
    assert ref.chunked_sum(ar, xs) == 1 + 6 * 2.0 ** -24  # second chunk: 6 * 2^-24, exact
    assert ref.chunked_dot(ar, xs, [1.0] * 70) == 1 + 6 * 2.0 ** -24
    assert ref.chunked_sum(ar, xs[:64]) == ref.chain_sum(ar, 0.0, xs[:64])  # one chunk: no fold


def test_philox_and_dropout_constants():
    # Philox4x32-10 known answers (Salmon et al.'s Random123 test vectors) and the operator
    assert ref.philox4x32_10((0, 0, 0, 0), 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert ref.philox4x32_10((0xFFFFFFFF,) * 4, 0xFFFFFFFF, 0xFFFFFFFF) == (
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert ref.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), 0xA4093822, 0x299F31D0) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)
    rng = random.Random(5)
    ctrs = [[rng.getrandbits(32) for _ in range(4)] for _ in range(64)]
    k0, k1 = rng.getrandbits(32), rng.getrandbits(32)
    got = detlstm._ops.philox4x32_10(torch.tensor(ctrs, dtype=torch.int64), k0, k1).tolist()
    assert got == [list(ref.philox4x32_10(c, k0, k1)) for c in ctrs]
    d = ref.Dropout(0.3, -5, ref.Arith(torch.float32))
    assert d.seed == 2 ** 64 - 5 and d.threshold == round(0.3 * 2 ** 32)
    assert d.scale == _f32(1 / 0.7)


# --------------------------------------------------------------------------------------------------
# The operators equal the reference
# --------------------------------------------------------------------------------------------------

# (id, T, B, I, H, layers, bidirectional, bias, proj, lengths, dtype, dropout)
CONFIGS = [
    ("uni-f32", 4, 3, 5, 4, 1, False, True, 0, [4, 2, 3], torch.float32, 0.0),
    ("uni-nobias-f64", 3, 3, 6, 5, 1, False, False, 0, [2, 2, 1], torch.float64, 0.0),
    ("bi2-dropout-f32", 5, 3, 3, 3, 2, True, True, 0, [3, 5, 1], torch.float32, 0.5),
    ("bi2-dropout-f64", 5, 3, 3, 3, 2, True, True, 0, [3, 5, 1], torch.float64, 0.5),
    ("bi2-proj-nobias-f32", 6, 4, 4, 5, 2, True, False, 3, [5, 2, 5, 1], torch.float32, 0.0),
    ("bi2-proj-nobias-f64", 6, 4, 4, 5, 2, True, False, 3, [5, 2, 5, 1], torch.float64, 0.0),
    ("uni2-proj-dropout-f32", 4, 2, 4, 4, 2, False, True, 3, [4, 3], torch.float32, 0.3),
    ("uni2-proj-dropout-f64", 4, 2, 4, 4, 2, False, True, 3, [4, 3], torch.float64, 0.3),
    ("uni2-dropout1-f32", 3, 2, 3, 3, 2, False, True, 0, [3, 2], torch.float32, 1.0),
    # sums longer than one chunk: the input dot over 70, dh / dh0 / dX over 4H = 68 gate rows
    ("bi-long-f32", 3, 2, 70, 17, 1, True, True, 0, [3, 2], torch.float32, 0.0),
    ("bi-long-f64", 3, 2, 70, 17, 1, True, True, 0, [3, 2], torch.float64, 0.0),
    # weight and bias gradients over 66 valid rows (two chunks)
    ("bi-rows66-f32", 7, 12, 3, 2, 1, True, True, 0, [7] * 8 + [5, 3, 1, 1], torch.float32, 0.0),
    ("uni2-rows66-dropout-f64", 7, 12, 2, 2, 2, False, True, 0, [1, 1, 3, 5] + [7] * 8, torch.float64, 0.2),
    # projection over H = 66 (two chunks); dh over 4H = 264 gate rows (five chunks, a 4-add fold)
    ("uni-wideproj-f32", 2, 2, 3, 66, 1, False, True, 2, [2, 1], torch.float32, 0.0),
    ("bi-wideproj-f64", 2, 2, 3, 66, 1, True, False, 2, [2, 2], torch.float64, 0.0),
    # dX 520 wide: the CPU's input gradient takes it in two column blocks (kNB = 512), each task
    # adding its tile of the reverse part to the forward part's
    ("bi-wideinput-f32", 2, 3, 520, 2, 1, True, True, 0, [2, 1, 2], torch.float32, 0.0),
    # three layers: the middle layer's input gradient goes over its own dY, in the one buffer
    ("bi3-dropout-f32", 4, 3, 3, 3, 3, True, True, 0, [4, 1, 3], torch.float32, 0.5),
    ("uni3-proj-f64", 3, 2, 2, 4, 3, False, True, 2, [3, 2], torch.float64, 0.2),
]


def make_call(T, B, I, H, layers, bidir, bias, proj, lengths, dtype, dropout, seed=0, train=True):
    """Operator arguments and output gradients, all values exact in dtype."""
    g = torch.Generator().manual_seed(seed)
    D, R = (2 if bidir else 1), (proj or H)

    def uniform(*shape, k):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k).to(dtype)

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    weights = []
    for layer in range(layers):
        for _ in range(D):
            K = I if layer == 0 else D * R
            weights += [uniform(4 * H, K, k=1.5 / math.sqrt(K)), uniform(4 * H, R, k=1.5 / math.sqrt(R))]
            if bias:
                weights += [uniform(4 * H, k=0.5), uniform(4 * H, k=0.5)]
            if proj:
                weights += [uniform(R, H, k=1.5 / math.sqrt(H))]
    args = dict(input=normal(T, B, I), lengths=torch.tensor(lengths, dtype=torch.int64),
                h0=normal(layers * D, B, R), c0=normal(layers * D, B, H), weights=weights,
                has_biases=bias, num_layers=layers, bidirectional=bidir, dropout=dropout, train=train,
                seed=torch.tensor([-8_000_000_000_123 - seed], dtype=torch.int64))
    grads = (normal(T, B, D * R), normal(layers * D, B, R), normal(layers * D, B, H))
    return args, grads


def run_operators(args, grads, device):
    def dev(t):
        return t.to(device)

    op = torch.ops.detlstm
    real, hidden = args["h0"].shape[-1], args["c0"].shape[-1]  # h is narrower only with projections
    fixed = (args["has_biases"], args["num_layers"], args["bidirectional"], args["dropout"],
             args["train"], args["seed"], real if real != hidden else 0)
    x, h0, c0 = dev(args["input"]), dev(args["h0"]), dev(args["c0"])
    ws = [dev(w) for w in args["weights"]]
    out, h_n, c_n, layer_out, gates, cells = op.lstm_forward(x, args["lengths"], h0, c0, ws, *fixed)
    back = op.lstm_backward(*(dev(g) for g in grads), x, args["lengths"], h0, c0, ws, out, layer_out,
                            gates, cells, *fixed)
    return (out, h_n, c_n), back


def compare(args, grads, device, version=REF_VERSION):
    (out, h_n, c_n), (gx, gh0, gc0, gw) = run_operators(args, grads, device)
    fwd, (rgx, rgh0, rgc0, rgw) = ref.lstm_call(**args, grad_output=grads[0], grad_h_n=grads[1],
                                                grad_c_n=grads[2], version=version, chunk=CHUNK)
    pairs = [("output", out, fwd["output"]), ("h_n", h_n, fwd["h_n"]), ("c_n", c_n, fwd["c_n"]),
             ("grad_input", gx, rgx), ("grad_h0", gh0, rgh0), ("grad_c0", gc0, rgc0)]
    pairs += [(f"grad_weights[{i}]", a, b) for i, (a, b) in enumerate(zip(gw, rgw))]
    failures = []
    for name, got, want in pairs:
        try:
            assert_bitwise_equal(got.cpu(), want, name)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, f"kernels != version {version} reference:\n  " + "\n  ".join(failures)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_operators_equal_reference(config, device):
    _skip_cuda_float64(device, config[10])
    args, grads = make_call(*config[1:])
    compare(args, grads, device)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_mode_ignores_dropout(device):
    args, grads = make_call(4, 3, 3, 3, 2, True, True, 0, [4, 1, 3], torch.float32, 0.5, train=False)
    compare(args, grads, device)


# --------------------------------------------------------------------------------------------------
# Where version 1's chains and version 2's chunks round differently, the kernels give version 2
# --------------------------------------------------------------------------------------------------

def _stagnating_call(dtype, I=100, H=2):
    """Every gate's input dot product is 1 * 1 followed by I - 1 terms of half an ulp of 1: one chain
    stays at 1 (each add ties back to even), chunking keeps the tail of every chunk but the first."""
    tiny = 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53
    w_ih = torch.full((4 * H, I), tiny, dtype=dtype)
    w_ih[:, 0] = 1.0
    w_ih[H:2 * H, 0] = -1.0  # a different forget gate (the cell state then carries less)
    w_hh = torch.full((4 * H, H), 0.25, dtype=dtype)
    x = torch.ones(2, 1, I, dtype=dtype)
    args = dict(input=x, lengths=torch.tensor([2]), h0=torch.zeros(1, 1, H, dtype=dtype),
                c0=torch.zeros(1, 1, H, dtype=dtype), weights=[w_ih, w_hh], has_biases=False,
                num_layers=1, bidirectional=False, dropout=0.0, train=False,
                seed=torch.tensor([0], dtype=torch.int64))
    g = torch.Generator().manual_seed(0)
    grads = tuple(torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
                  for s in [(2, 1, H), (1, 1, H), (1, 1, H)])
    return args, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_rounding_differs_from_one_chain(dtype, device):
    _skip_cuda_float64(device, dtype)
    args, grads = _stagnating_call(dtype)
    v1, _ = ref.lstm_call(**args, grad_output=grads[0], grad_h_n=grads[1], grad_c_n=grads[2], version=1)
    v2, _ = ref.lstm_call(**args, grad_output=grads[0], grad_h_n=grads[1], grad_c_n=grads[2], version=2)
    # the references disagree (the test's premise), on the gates and on the outputs
    assert not torch.equal(v1["gates"], v2["gates"])
    assert not torch.equal(v1["output"], v2["output"]) and not torch.equal(v1["c_n"], v2["c_n"])
    # the kernels give version 2's values (with DETLSTM_REF_VERSION=1: version 1's, which checks
    # this construction against version 1 kernels)
    want = v2 if REF_VERSION == 2 else v1
    (out, h_n, c_n), _ = run_operators(args, grads, device)
    for name, got in [("output", out), ("h_n", h_n), ("c_n", c_n)]:
        assert_bitwise_equal(got.cpu(), want[name], f"{name} (kernels vs version {REF_VERSION})")
    compare(args, grads, device)  # and the backward too
