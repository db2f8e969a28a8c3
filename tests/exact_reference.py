"""An exact reference of detlstm's arithmetic (docs: /work/shared/ARITHMETIC.md), in pure Python.

One call of the detlstm operators (forward: output, h_n, c_n; backward: grad_input, grad_h0, grad_c0
and every weight gradient) is recomputed by performing each rounded operation of the contract one at
a time, on Python floats that hold exact binary32 or binary64 values:

* add, subtract, multiply and fma are computed exactly (integers times powers of two) and rounded
  once, to nearest even, to the call's format (``round_dyadic``; ``round_fraction`` is the same for
  any rational). Nothing is rounded through binary64 first, so there is no double rounding. IEEE
  signed zeros are followed: x + (-x) = +0, -0 + -0 = -0, fma(a, b, +0) with a*b = -0 is +0, and
  a nonzero result that underflows keeps its sign.
* exp, sigmoid and tanh: in float32 detlstm's own canonical functions (``detlstm.canonical_unary``);
  in float64 the platform's exp and tanh (what csrc/common/canonical_math.h calls) and its sigmoid
  formula written out in binary64 operations.
* the cell is csrc/common/lstm_cell.h's lstm_cell_forward / lstm_cell_backward, operation by
  operation.
* dropout between layers (training mode): Philox4x32-10 draws (``philox4x32_10``, a Python
  implementation of csrc/common/philox.h), threshold = round-half-even(p * 2^32), scale = 1/(1-p)
  computed in binary64 and converted once to the dtype, as csrc/call_checks.h and the kernels do.

``version`` selects the summation shape:

* 1: every sum is one chain in ascending index order (the gate pre-activation a chain of fma from
  b_ih + b_hh over the input terms, then continuing over the recurrent terms; a continuing row's dh a
  chain starting from dy; dX one chain over the forward direction's gate rows, continuing over the
  reverse direction's).
* 2: ARITHMETIC.md rules 3, 4 and 8: every dot product and sum is cut into consecutive chunks of
  ``chunk`` terms (64), each chunk one chain from +0, then the left fold of the chunk partials;
  a = ((b_ih + b_hh) + X) + R, dh = dy + S, dX = S_forward + S_reverse, and so on.

Small shapes only (T <= ~7, B <= ~4, sizes up to ~70): every operation is a few Python big-integer
operations.
"""

import math

import torch

CHUNK = 64

# (precision in bits including the hidden one, minimum normal exponent, maximum exponent)
BINARY32 = (24, -126, 127)
BINARY64 = (53, -1022, 1023)


# --------------------------------------------------------------------------------------------------
# Correct rounding
# --------------------------------------------------------------------------------------------------

def _finish(neg, m, q, fmt):
    """The value (-1)^neg * m * 2^q, m an integer that fits the format's precision, as a float; inf
    past the largest finite value."""
    if m == 0:
        return -0.0 if neg else 0.0
    if m.bit_length() - 1 + q > fmt[2]:
        return -math.inf if neg else math.inf
    v = math.ldexp(m, q)  # exact: m * 2^q is a binary32 or binary64 value, hence a double
    return -v if neg else v


def round_dyadic(n, k, fmt):
    """n * 2^k (n, k integers), rounded to nearest even in the format (BINARY32 or BINARY64).
    Subnormals are kept, overflow gives inf, a negative value that rounds to zero gives -0. An exact
    zero gives +0 (the sign of an exact zero is the caller's business)."""
    p, emin, _ = fmt
    neg = n < 0
    if neg:
        n = -n
    if n == 0:
        return 0.0
    e = n.bit_length() - 1 + k  # floor(log2(value))
    q = max(e, emin) - (p - 1)  # the exponent of the format's last place at this value
    shift = q - k
    if shift <= 0:
        return _finish(neg, n << -shift, q, fmt)
    m = n >> shift
    rem = n & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (m & 1)):
        m += 1  # may reach 2^p: still exactly representable (the next binade's first value)
    return _finish(neg, m, q, fmt)


def round_fraction(value, fmt):
    """A fractions.Fraction (or anything with numerator / denominator), rounded to nearest even in
    the format, the same rules as round_dyadic but for any rational."""
    num, den = value.numerator, value.denominator
    if den < 0:
        num, den = -num, -den
    p, emin, _ = fmt
    neg = num < 0
    if neg:
        num = -num
    if num == 0:
        return 0.0
    e = num.bit_length() - den.bit_length()  # floor(log2(num / den)) is e or e - 1
    if (num << -e if e < 0 else num) < (den << e if e > 0 else den):
        e -= 1
    q = max(e, emin) - (p - 1)
    big_n, big_d = (num, den << q) if q >= 0 else (num << -q, den)
    m, rem = divmod(big_n, big_d)
    if 2 * rem > big_d or (2 * rem == big_d and (m & 1)):
        m += 1
    return _finish(neg, m, q, fmt)


def _dyadic(x):
    """x = n * 2^k exactly (x a finite float)."""
    n, d = x.as_integer_ratio()
    return n, 1 - d.bit_length()


def _negative(x):
    return math.copysign(1.0, x) < 0


def round_to(x, fmt):
    """A double rounded once to the format (for binary64 the identity)."""
    if fmt is BINARY64 or x == 0 or not math.isfinite(x):
        return x
    n, k = _dyadic(x)
    return round_dyadic(n, k, fmt)


class Arith:
    """The correctly rounded operations of one format, and the canonical functions of the dtype."""

    def __init__(self, dtype):
        if dtype == torch.float32:
            self.fmt = BINARY32
        elif dtype == torch.float64:
            self.fmt = BINARY64
        else:
            raise ValueError(f"float32 or float64, got {dtype}")
        self.dtype = dtype

    # -- basic operations ------------------------------------------------------------------------
    def add(self, a, b):
        if self.fmt is BINARY64:
            return a + b  # Python's float add is IEEE binary64, round to nearest even
        if a == 0 and b == 0:
            return -0.0 if (_negative(a) and _negative(b)) else 0.0
        if not (math.isfinite(a) and math.isfinite(b)):
            return a + b  # inf/nan arithmetic is the same in both formats
        na, ka = _dyadic(a)
        nb, kb = _dyadic(b)
        k = min(ka, kb)
        n = (na << (ka - k)) + (nb << (kb - k))
        if n == 0:
            return 0.0  # x + (-x) = +0 in round to nearest
        return round_dyadic(n, k, self.fmt)

    def sub(self, a, b):
        return self.add(a, -b)

    def mul(self, a, b):
        if self.fmt is BINARY64:
            return a * b
        if not (math.isfinite(a) and math.isfinite(b)):
            return a * b
        neg = _negative(a) != _negative(b)
        if a == 0 or b == 0:
            return -0.0 if neg else 0.0
        na, ka = _dyadic(a)
        nb, kb = _dyadic(b)
        return round_dyadic(na * nb, ka + kb, self.fmt)

    def fma(self, a, b, c):
        """a * b + c with one rounding."""
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
            return a * b + c  # no finite part to round: IEEE's inf/nan rules, same in every format
        if a == 0 or b == 0:
            # exact product zero with the sign of a*b; the sum follows add's signed-zero rules
            prod_zero = -0.0 if _negative(a) != _negative(b) else 0.0
            if c == 0:
                return -0.0 if (_negative(prod_zero) and _negative(c)) else 0.0
            return c
        na, ka = _dyadic(a)
        nb, kb = _dyadic(b)
        n_p, k_p = na * nb, ka + kb
        if c == 0:
            return round_dyadic(n_p, k_p, self.fmt)  # a nonzero product plus a zero: no cancellation
        nc, kc = _dyadic(c)
        k = min(k_p, kc)
        n = (n_p << (k_p - k)) + (nc << (kc - k))
        if n == 0:
            return 0.0
        return round_dyadic(n, k, self.fmt)

    # -- exp, sigmoid, tanh ---------------------------------------------------------------------
    def _canonical32(self, xs, fn):
        import detlstm

        if not xs:
            return []
        return detlstm.canonical_unary(torch.tensor(xs, dtype=torch.float32), fn).tolist()

    def sigmoid_many(self, xs):
        if self.fmt is BINARY32:
            return self._canonical32(xs, "sigmoid")
        return [_sigmoid64(x) for x in xs]

    def tanh_many(self, xs):
        if self.fmt is BINARY32:
            return self._canonical32(xs, "tanh")
        return [math.tanh(x) for x in xs]

    def exp_many(self, xs):
        if self.fmt is BINARY32:
            return self._canonical32(xs, "exp")
        return [math.exp(x) for x in xs]


def _sigmoid64(x):
    # canonical_math.h's double sigmoid: e = exp(-|x|); d = 1 + e; x >= 0 ? 1/d : e/d
    e = math.exp(-(-x if x < 0 else x))
    d = 1.0 + e
    return 1.0 / d if x >= 0.0 else e / d


# --------------------------------------------------------------------------------------------------
# Sums and dot products
# --------------------------------------------------------------------------------------------------

def chain_dot(ar, init, xs, ws):
    """One chain of fma in ascending order: acc = init; acc = fma(x_k, w_k, acc)."""
    acc = init
    fma = ar.fma
    for x, w in zip(xs, ws):
        acc = fma(x, w, acc)
    return acc


def chain_sum(ar, init, xs):
    acc = init
    add = ar.add
    for x in xs:
        acc = add(acc, x)
    return acc


def _fold(ar, partials):
    acc = partials[0]
    for p in partials[1:]:
        acc = ar.add(acc, p)
    return acc


def chunked_dot(ar, xs, ws, chunk=CHUNK):
    """Rule 3: chunks of `chunk` consecutive terms, each one fma chain from +0, then the left fold
    of the partials starting from the first."""
    n = len(xs)
    assert len(ws) == n
    if n == 0:
        return 0.0
    return _fold(ar, [chain_dot(ar, 0.0, xs[i:i + chunk], ws[i:i + chunk]) for i in range(0, n, chunk)])


def chunked_sum(ar, xs, chunk=CHUNK):
    n = len(xs)
    if n == 0:
        return 0.0
    return _fold(ar, [chain_sum(ar, 0.0, xs[i:i + chunk]) for i in range(0, n, chunk)])


# --------------------------------------------------------------------------------------------------
# Philox4x32-10 and dropout
# --------------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def philox4x32_10(ctr, key0, key1):
    """Philox4x32-10 of a 4-word counter and a 2-word key (csrc/common/philox.h)."""
    c0, c1, c2, c3 = ctr
    for r in range(10):
        if r > 0:
            key0 = (key0 + 0x9E3779B9) & _M32
            key1 = (key1 + 0xBB67AE85) & _M32
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ key0, p1 & _M32, (p0 >> 32) ^ c3 ^ key1, p0 & _M32
    return c0, c1, c2, c3


class Dropout:
    """The mask between layer `layer` and layer+1 (csrc/cpu/lstm_cpu_impl.h apply_dropout)."""

    def __init__(self, p, seed, ar):
        self.seed = seed % (1 << 64)
        two32 = 4294967296.0
        # std::nearbyint under round-to-nearest-even: Python's round on a float is the same
        self.threshold = 1 << 32 if p >= 1.0 else int(round(p * two32))
        scale64 = math.inf if p >= 1.0 else 1.0 / (1.0 - p)  # binary64, as call_checks.h
        self.scale = round_to(scale64, ar.fmt)  # static_cast<T> in the kernel: one rounding
        self.ar = ar
        self._cache = {}

    def keep(self, layer, t, b, f):
        key = (layer, t, b, f >> 2)
        block = self._cache.get(key)
        if block is None:
            block = philox4x32_10((f >> 2, b, t, layer), self.seed & _M32, (self.seed >> 32) & _M32)
            self._cache[key] = block
        return block[f & 3] >= self.threshold

    def apply(self, layer, t, b, values):
        return [self.ar.mul(v, self.scale) if self.keep(layer, t, b, f) else 0.0
                for f, v in enumerate(values)]


# --------------------------------------------------------------------------------------------------
# The cell (csrc/common/lstm_cell.h)
# --------------------------------------------------------------------------------------------------

def cell_forward(ar, a, c_prev, H):
    """a: the 4H pre-activations (i, f, g, o blocks); returns (gates i,f,g,o activated (4H), c, h)."""
    sig = ar.sigmoid_many(a[0:2 * H] + a[3 * H:4 * H])
    i, f, o = sig[0:H], sig[H:2 * H], sig[2 * H:3 * H]
    g = ar.tanh_many(a[2 * H:3 * H])
    c = [ar.fma(f[j], c_prev[j], ar.mul(i[j], g[j])) for j in range(H)]
    tc = ar.tanh_many(c)
    h = [ar.mul(o[j], tc[j]) for j in range(H)]
    return i + f + g + o, c, h


def cell_backward(ar, dh, dc_next, gates, c, c_prev, H):
    """lstm_cell_backward for the H units of one row: returns (da (4H, blocks i,f,g,o), dc_prev)."""
    tcs = ar.tanh_many(c)
    da = [0.0] * (4 * H)
    dc_prev = [0.0] * H
    mul, fma = ar.mul, ar.fma
    for j in range(H):
        i, f, g, o = gates[j], gates[H + j], gates[2 * H + j], gates[3 * H + j]
        tc = tcs[j]
        d_o = mul(dh[j], tc)
        dc = fma(mul(dh[j], o), fma(-tc, tc, 1.0), dc_next[j])
        da[j] = mul(mul(dc, g), fma(-i, i, i))
        da[H + j] = mul(mul(dc, c_prev[j]), fma(-f, f, f))
        da[2 * H + j] = mul(mul(dc, i), fma(-g, g, 1.0))
        da[3 * H + j] = mul(d_o, fma(-o, o, o))
        dc_prev[j] = mul(dc, f)
    return da, dc_prev


# --------------------------------------------------------------------------------------------------
# The operator call
# --------------------------------------------------------------------------------------------------

def _lists(t):
    return t.detach().cpu().tolist()


class _Call:
    def __init__(self, input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional,
                 dropout, train, seed, version, chunk):
        if version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {version}")
        self.ar = Arith(input.dtype)
        self.version, self.chunk = version, chunk
        self.T, self.B, self.I = input.shape
        self.L, self.D = num_layers, 2 if bidirectional else 1
        self.has_bias = has_biases
        self.lengths = [int(v) for v in lengths.tolist()]
        per_plain = 4 if has_biases else 2
        groups = self.L * self.D
        self.proj = len(weights) == (per_plain + 1) * groups
        per = per_plain + (1 if self.proj else 0)
        assert len(weights) == per * groups
        self.per = per
        self.H = weights[1].shape[0] // 4
        self.R = weights[1].shape[1]
        self.x = _lists(input)
        self.h0, self.c0 = _lists(h0), _lists(c0)
        self.w = []  # per group: dict of lists
        for gi in range(groups):
            ws = weights[gi * per:(gi + 1) * per]
            d = {"w_ih": _lists(ws[0]), "w_hh": _lists(ws[1])}
            if has_biases:
                d["b_ih"], d["b_hh"] = _lists(ws[2]), _lists(ws[3])
            if self.proj:
                d["w_hr"] = _lists(ws[-1])
            # columns of W_hh and W_hr for the backward's sums over rows
            d["w_hh_cols"] = [list(col) for col in zip(*d["w_hh"])]
            d["w_ih_cols"] = [list(col) for col in zip(*d["w_ih"])]
            if self.proj:
                d["w_hr_cols"] = [list(col) for col in zip(*d["w_hr"])]
            self.w.append(d)
        self.dropout = None
        if train and dropout > 0.0 and num_layers > 1:
            self.dropout = Dropout(dropout, int(seed.reshape(-1)[0].item()), self.ar)
        self.valid = [(t, b) for t in range(self.T) for b in range(self.B) if t < self.lengths[b]]

    def steps(self, d, b):
        """Time indices of row b in processing order."""
        n = self.lengths[b]
        return list(range(n)) if d == 0 else list(range(n - 1, -1, -1))

    def dot(self, init, xs, ws):
        """A dot product with an optional head (v1: the chain's start; v2: init + chunked dot)."""
        if self.version == 1:
            return chain_dot(self.ar, init, xs, ws)
        s = chunked_dot(self.ar, xs, ws, self.chunk)
        return s if init is None else self.ar.add(init, s)

    def plain_sum(self, xs):
        if self.version == 1:
            return chain_sum(self.ar, 0.0, xs)
        return chunked_sum(self.ar, xs, self.chunk)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self):
        ar, T, B, H, R, D, L = self.ar, self.T, self.B, self.H, self.R, self.D, self.L
        DR = D * R
        self.layer_in = []  # per layer: (T, B, K) after dropout (None at padding)
        self.st = []        # per layer, direction: dict of per-(t, b) saved values
        self.layer_y = []   # per layer: (T, B, D*R), zeros at padding
        h_n = [[None] * B for _ in range(L * D)]
        c_n = [[None] * B for _ in range(L * D)]
        X = self.x
        for l in range(L):
            if l > 0:
                Y = self.layer_y[l - 1]
                if self.dropout is not None:
                    X = [[self.dropout.apply(l - 1, t, b, Y[t][b]) if t < self.lengths[b] else None
                          for b in range(B)] for t in range(T)]
                else:
                    X = Y
            self.layer_in.append(X)
            Yl = [[[0.0] * DR for _ in range(B)] for _ in range(T)]
            per_dir = []
            for d in range(D):
                gi = l * D + d
                w = self.w[gi]
                if self.has_bias:
                    bias = [ar.add(w["b_ih"][n], w["b_hh"][n]) for n in range(4 * H)]
                st = {"gates": {}, "c": {}, "m": {}, "h_prev": {}, "c_prev": {}}
                for b in range(B):
                    h_prev, c_prev = self.h0[gi][b], self.c0[gi][b]
                    for t in self.steps(d, b):
                        x = X[t][b]
                        a = []
                        for n in range(4 * H):
                            if self.version == 1:
                                acc = bias[n] if self.has_bias else 0.0
                                acc = chain_dot(ar, acc, x, w["w_ih"][n])
                                acc = chain_dot(ar, acc, h_prev, w["w_hh"][n])
                            else:
                                xs = chunked_dot(ar, x, w["w_ih"][n], self.chunk)
                                rs = chunked_dot(ar, h_prev, w["w_hh"][n], self.chunk)
                                acc = ar.add(ar.add(bias[n], xs), rs) if self.has_bias else ar.add(xs, rs)
                            a.append(acc)
                        gates, c, m = cell_forward(ar, a, c_prev, H)
                        if self.proj:
                            h = [self.dot(None if self.version == 2 else 0.0, m, w["w_hr"][q])
                                 for q in range(R)]
                        else:
                            h = m
                        st["gates"][t, b], st["c"][t, b], st["m"][t, b] = gates, c, m
                        st["h_prev"][t, b], st["c_prev"][t, b] = h_prev, c_prev
                        Yl[t][b][d * R:(d + 1) * R] = h
                        h_prev, c_prev = h, c
                    h_n[gi][b], c_n[gi][b] = h_prev, c_prev
                per_dir.append(st)
            self.st.append(per_dir)
            self.layer_y.append(Yl)
        self.h_n, self.c_n = h_n, c_n

    # -- backward ----------------------------------------------------------------------------------
    def backward(self, grad_output, grad_h_n, grad_c_n):
        ar, T, B, H, R, D, L, K0 = self.ar, self.T, self.B, self.H, self.R, self.D, self.L, self.I
        dy_all = _lists(grad_output)
        dh_n, dc_n = _lists(grad_h_n), _lists(grad_c_n)
        dh0 = [[None] * B for _ in range(L * D)]
        dc0 = [[None] * B for _ in range(L * D)]
        gw = [None] * (L * D * self.per)
        dY = dy_all
        grad_input = None
        for l in range(L - 1, -1, -1):
            X = self.layer_in[l]
            K = len(self.w[l * D]["w_ih"][0])
            da_all, dh_all = [], []
            for d in range(D):
                gi = l * D + d
                w, st = self.w[gi], self.st[l][d]
                da_d, dh_d = {}, {}
                for b in range(B):
                    steps = self.steps(d, b)
                    dc = dc_n[gi][b]
                    da_next = None
                    for idx in range(len(steps) - 1, -1, -1):
                        t = steps[idx]
                        dy = dY[t][b][d * R:(d + 1) * R]
                        if da_next is None:  # the row's last processed step
                            dh = [ar.add(dy[j], dh_n[gi][b][j]) for j in range(R)]
                        elif self.version == 1:
                            dh = [chain_dot(ar, dy[j], da_next, w["w_hh_cols"][j]) for j in range(R)]
                        else:
                            dh = [ar.add(dy[j], chunked_dot(ar, da_next, w["w_hh_cols"][j], self.chunk))
                                  for j in range(R)]
                        dh_d[t, b] = dh
                        if self.proj:
                            dm = [self.dot(None if self.version == 2 else 0.0, dh, w["w_hr_cols"][k])
                                  for k in range(H)]
                        else:
                            dm = dh
                        da, dc = cell_backward(ar, dm, dc, st["gates"][t, b], st["c"][t, b],
                                               st["c_prev"][t, b], H)
                        da_d[t, b] = da
                        da_next = da
                    dh0[gi][b] = [self.dot(None if self.version == 2 else 0.0, da_next,
                                           w["w_hh_cols"][j]) for j in range(R)]
                    dc0[gi][b] = dc
                da_all.append(da_d)
                dh_all.append(dh_d)

            # the layer input's gradient, valid rows only
            dX = [[[0.0] * K for _ in range(B)] for _ in range(T)]
            for (t, b) in self.valid:
                row = dX[t][b]
                for k in range(K):
                    if self.version == 1:
                        acc = 0.0
                        for d in range(D):
                            acc = chain_dot(ar, acc, da_all[d][t, b], self.w[l * D + d]["w_ih_cols"][k])
                    else:
                        acc = None
                        for d in range(D):
                            s = chunked_dot(ar, da_all[d][t, b], self.w[l * D + d]["w_ih_cols"][k],
                                            self.chunk)
                            acc = s if acc is None else ar.add(acc, s)
                    row[k] = acc

            # weight and bias gradients over the valid rows in storage order
            for d in range(D):
                gi = l * D + d
                st = self.st[l][d]
                das = [da_all[d][tb] for tb in self.valid]
                xs = [X[t][b] for (t, b) in self.valid]
                hps = [st["h_prev"][tb] for tb in self.valid]
                dw_ih = [[self._row_dot([v[n] for v in das], [x[k] for x in xs]) for k in range(K)]
                         for n in range(4 * H)]
                dw_hh = [[self._row_dot([v[n] for v in das], [hp[j] for hp in hps]) for j in range(R)]
                         for n in range(4 * H)]
                base = gi * self.per
                gw[base] = dw_ih
                gw[base + 1] = dw_hh
                if self.has_bias:
                    db = [self.plain_sum([v[n] for v in das]) for n in range(4 * H)]
                    gw[base + 2] = db
                    gw[base + 3] = list(db)
                if self.proj:
                    dhs = [dh_all[d][tb] for tb in self.valid]
                    ms = [st["m"][tb] for tb in self.valid]
                    gw[base + self.per - 1] = [[self._row_dot([v[q] for v in dhs], [m[k] for m in ms])
                                                for k in range(H)] for q in range(R)]
            if l > 0:
                if self.dropout is not None:
                    dY = [[self.dropout.apply(l - 1, t, b, dX[t][b]) if t < self.lengths[b] else dX[t][b]
                           for b in range(B)] for t in range(T)]
                else:
                    dY = dX
            else:
                grad_input = dX
        assert K0 == len(grad_input[0][0])
        return grad_input, dh0, dc0, gw

    def _row_dot(self, xs, ws):
        if self.version == 1:
            return chain_dot(self.ar, 0.0, xs, ws)
        return chunked_dot(self.ar, xs, ws, self.chunk)


def _tensor(values, dtype):
    return torch.tensor(values, dtype=dtype)


def lstm_forward(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout,
                 train, seed, *, version=2, chunk=CHUNK):
    """torch.ops.detlstm.lstm_forward's first three results (output, h_n, c_n), exactly, plus the
    saved layer_out, gates and cells (padding zero) as a dict."""
    call = _Call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout,
                 train, seed, version, chunk)
    call.forward()
    return _forward_results(call, input.dtype)


def _forward_results(call, dtype):
    T, B, H, D, L = call.T, call.B, call.H, call.D, call.L
    gates = [[[[[0.0] * (4 * H) for _ in range(B)] for _ in range(T)] for _ in range(D)] for _ in range(L)]
    cells = [[[[[0.0] * H for _ in range(B)] for _ in range(T)] for _ in range(D)] for _ in range(L)]
    for l in range(L):
        for d in range(D):
            for (t, b), g in call.st[l][d]["gates"].items():
                gates[l][d][t][b] = g
                cells[l][d][t][b] = call.st[l][d]["c"][t, b]
    out = {
        "output": _tensor(call.layer_y[-1], dtype),
        "h_n": _tensor(call.h_n, dtype),
        "c_n": _tensor(call.c_n, dtype),
        "layer_out": (_tensor(call.layer_y[:-1], dtype) if L > 1
                      else torch.empty((0, T, B, D * call.R), dtype=dtype)),
        "gates": _tensor(gates, dtype),
        "cells": _tensor(cells, dtype),
    }
    return out


def lstm_call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout, train,
              seed, grad_output, grad_h_n, grad_c_n, *, version=2, chunk=CHUNK):
    """Forward and backward of one call: (forward dict as lstm_forward, (grad_input, grad_h0,
    grad_c0, [grad_weights])) as torch.ops.detlstm.lstm_backward returns them."""
    dtype = input.dtype
    call = _Call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout,
                 train, seed, version, chunk)
    call.forward()
    fwd = _forward_results(call, dtype)
    gi, dh0, dc0, gw = call.backward(grad_output, grad_h_n, grad_c_n)
    grads = (_tensor(gi, dtype), _tensor(dh0, dtype), _tensor(dc0, dtype),
             [_tensor(g, dtype) for g in gw])
    return fwd, grads


def lstm_backward(grad_output, grad_h_n, grad_c_n, input, lengths, h0, c0, weights, has_biases,
                  num_layers, bidirectional, dropout, train, seed, *, version=2, chunk=CHUNK):
    """torch.ops.detlstm.lstm_backward's results (grad_input, grad_h0, grad_c0, [grad_weights]),
    exactly (the forward's saved values are recomputed)."""
    return lstm_call(input, lengths, h0, c0, weights, has_biases, num_layers, bidirectional, dropout,
                     train, seed, grad_output, grad_h_n, grad_c_n, version=version, chunk=chunk)[1]
