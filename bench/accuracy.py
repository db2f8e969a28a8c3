"""python -m bench.accuracy: how far detlstm float32 and nn.LSTM float32 are from float64.

Both run the same work (same weights, inputs and output gradients) on the CPU; the reference is
nn.LSTM in float64 on those weights and inputs (every float32 value is exact in float64). For every
result (output, h_n, c_n) and every gradient (input, h0, c0, each weight and bias), the table gives
the max and the median over the tensor's elements of |result - ref64| / max|ref64|, for detlstm and
for nn.LSTM, and their ratios. Issue 12's requirement: detlstm's max and median each at most
RATIO_LIMIT (1.25) times nn.LSTM's. Padding positions (variable lengths) are left out.

Shapes:
  fastrnns   PyTorch's benchmarks/fastrnns/test.py setup: torch.manual_seed(17), then x = randn(T, B, I),
             hx, cx = randn(1, B, H), nn.LSTM(512, 512); T=100, B=64; the gradient flows from the
             output only, grad = randn_like(output) after torch.manual_seed(17), as there.
  bi2-uneven 2 layers, bidirectional, T=50, B=32, I=H=256, lengths uniform in [10, 50] (one at 50), as a
             PackedSequence; random gradients on output, h_n and c_n.

The fold study (--fold-study) isolates the summation: a (6400 x 128)^T (6400 x 128) product of
float32 data with a same-sign bias (like a weight gradient's large elements), summed by torch's
sgemm (MKL/oneDNN), by v2's chunks of 64 left-folded, by chunks of 256 left-folded, and by chunks
of 64 folded pairwise; each chain emulated one rounded fma at a time in numpy.

Usage: python -m bench.accuracy [--shapes fastrnns,bi2-uneven] [--fold-study]
"""

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import detlstm

RATIO_LIMIT = 1.25


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    I: int
    H: int
    layers: int
    bidirectional: bool
    min_length: int = 0  # 0: every sequence has length T (a padded tensor, no lengths)
    seed: int = 17
    loss_on_states: bool = False  # also random gradients on h_n and c_n


SHAPES = {
    "fastrnns": Shape("fastrnns", T=100, B=64, I=512, H=512, layers=1, bidirectional=False),
    "bi2-uneven": Shape("bi2-uneven", T=50, B=32, I=256, H=256, layers=2, bidirectional=True,
                        min_length=10, loss_on_states=True),
}


def make_inputs(shape: Shape):
    """Inputs in fastrnns' order of draws (lstm_inputs: x, hx, cx, then the module), float32."""
    torch.manual_seed(shape.seed)
    D = 2 if shape.bidirectional else 1
    lengths = None
    if shape.min_length:
        lengths = torch.randint(shape.min_length, shape.T + 1, (shape.B,), dtype=torch.int64)
        lengths[0] = shape.T
    x = torch.randn(shape.T, shape.B, shape.I)
    hx = torch.randn(shape.layers * D, shape.B, shape.H)
    cx = torch.randn(shape.layers * D, shape.B, shape.H)
    module = nn.LSTM(shape.I, shape.H, shape.layers, bidirectional=shape.bidirectional)
    return x, hx, cx, lengths, module.state_dict()


def models(shape: Shape, state):
    """nn.LSTM float32, detlstm.LSTM float32 and nn.LSTM float64 on the same weights."""
    kw = dict(num_layers=shape.layers, bidirectional=shape.bidirectional)
    ours = detlstm.LSTM(shape.I, shape.H, **kw)
    ours.load_state_dict(state)
    ref32 = nn.LSTM(shape.I, shape.H, **kw)
    ref32.load_state_dict(state)
    ref64 = nn.LSTM(shape.I, shape.H, dtype=torch.float64, **kw)
    ref64.load_state_dict({k: v.double() for k, v in state.items()})
    return {"detlstm": ours, "nn.LSTM": ref32, "float64": ref64}


def run(model, shape: Shape, x, hx, cx, lengths):
    """Forward and backward; returns {name: float64 tensor} of the results and gradients, valid
    positions only. The output gradients are float32 draws (exact in float64)."""
    dtype = next(model.parameters()).dtype
    model.zero_grad(set_to_none=True)
    x, h0, c0 = (t.detach().to(dtype).requires_grad_() for t in (x, hx, cx))
    if lengths is None:
        out, (h_n, c_n) = model(x, (h0, c0))
        out_valid = out
    else:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (h_n, c_n) = model(packed, (h0, c0))
        out_valid = out.data
    torch.manual_seed(shape.seed)  # fastrnns' backward setup: manual_seed(seed); randn_like(output)
    loss = (out_valid * torch.randn(out_valid.shape).to(dtype)).sum()
    if shape.loss_on_states:
        loss = loss + (h_n * torch.randn(h_n.shape).to(dtype)).sum() + (c_n * torch.randn(c_n.shape).to(dtype)).sum()
    loss.backward()
    results = {"output": out_valid, "h_n": h_n, "c_n": c_n}
    grad_x = x.grad
    if lengths is not None:
        valid = torch.arange(shape.T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
        grad_x = grad_x[valid]
    results.update({"grad input": grad_x, "grad h0": h0.grad, "grad c0": c0.grad})
    for name, p in model.named_parameters():
        results[f"grad {name}"] = p.grad
    return {k: v.detach().double() for k, v in results.items()}


def run_all(shape: Shape):
    """{"detlstm" | "nn.LSTM" | "float64": results} for one shape."""
    x, hx, cx, lengths, state = make_inputs(shape)
    return {name: run(m, shape, x, hx, cx, lengths) for name, m in models(shape, state).items()}


def rel_errors(result, ref):
    scale = ref.abs().max()
    return (result - ref).abs().flatten() / (scale if scale > 0 else 1.0)


@dataclass
class Row:
    tensor: str
    det_max: float
    nn_max: float
    det_median: float
    nn_median: float

    @property
    def max_ratio(self):
        return self.det_max / self.nn_max if self.nn_max > 0 else float("inf")

    @property
    def median_ratio(self):
        return self.det_median / self.nn_median if self.nn_median > 0 else float("inf")

    @property
    def ok(self):
        return (self.det_max <= RATIO_LIMIT * self.nn_max and
                self.det_median <= RATIO_LIMIT * self.nn_median)


def accuracy_rows(results):
    rows = []
    ref = results["float64"]
    for name in ref:
        d = rel_errors(results["detlstm"][name], ref[name])
        n = rel_errors(results["nn.LSTM"][name], ref[name])
        rows.append(Row(name, d.max().item(), n.max().item(), d.median().item(), n.median().item()))
    return rows


def markdown(shape: Shape, rows):
    lengths = f"lengths in [{shape.min_length}, {shape.T}]" if shape.min_length else "fixed length"
    lines = [
        f"### {shape.name}: T={shape.T}, B={shape.B}, I={shape.I}, H={shape.H}, {shape.layers} layer(s), "
        f"{'bidirectional' if shape.bidirectional else 'unidirectional'}, {lengths}",
        "",
        "|Relative error vs float64 (/ max abs ref) | detlstm max | nn.LSTM max | ratio | detlstm median "
        "| nn.LSTM median | ratio | <= %.2fx |" % RATIO_LIMIT,
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(f"| {r.tensor} | {r.det_max:.2e} | {r.nn_max:.2e} | {r.max_ratio:.2f} | "
                     f"{r.det_median:.2e} | {r.nn_median:.2e} | {r.median_ratio:.2f} | "
                     f"{'yes' if r.ok else '**no**'} |")
    return "\n".join(lines)


def _chunk_partials(a, b, chunk):
    """The chunk partials of a^T b: each chunk one chain of rounded fmas from +0 (a*b is exact in
    float64; the add is rounded to float64, then float32: a double rounding, rare, fine for a study)."""
    import numpy as np

    parts = []
    for lo in range(0, a.shape[0], chunk):
        acc = np.zeros((a.shape[1], b.shape[1]), np.float32)
        for p in range(lo, min(lo + chunk, a.shape[0])):
            acc = (np.outer(a[p], b[p]).astype(np.float64) + acc).astype(np.float32)
        parts.append(acc)
    return parts


def _fold(parts, pairwise):
    import numpy as np

    if not pairwise:
        total = parts[0]
        for p in parts[1:]:
            total = (total + p).astype(np.float32)
        return total
    while len(parts) > 1:
        parts = [(parts[i] + parts[i + 1]).astype(np.float32) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def fold_study(rows=6400, width=128, seed=1):
    """Markdown table: max and median error against float64 of four ways to sum the same product."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, width)) * 0.05 + 0.03).astype(np.float32)
    b = (rng.standard_normal((rows, width)) + 0.5).astype(np.float32)
    exact = a.astype(np.float64).T @ b.astype(np.float64)
    scale = np.abs(exact).max()
    ways = {"torch sgemm (CPU BLAS)": (torch.from_numpy(a).T @ torch.from_numpy(b)).numpy(),
            "chunks of 64, left fold (contract v2)": _fold(_chunk_partials(a, b, 64), False),
            "chunks of 256, left fold": _fold(_chunk_partials(a, b, 256), False),
            "chunks of 64, pairwise fold": _fold(_chunk_partials(a, b, 64), True)}
    lines = [f"### Fold study: ({rows} x {width})^T ({rows} x {width}), same-sign bias, float32", "",
             "| summation | max error | median error |", "|---|---:|---:|"]
    for name, result in ways.items():
        e = np.abs(result.astype(np.float64) - exact) / scale
        lines.append(f"| {name} | {e.max():.2e} | {np.median(e):.2e} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--fold-study", action="store_true", help="also the summation study (~10 s)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, detlstm "
          f"{detlstm.__version__}, CPU\n")
    all_ok = True
    for name in args.shapes.split(","):
        shape = SHAPES[name.strip()]
        rows = accuracy_rows(run_all(shape))
        all_ok &= all(r.ok for r in rows)
        print(markdown(shape, rows))
        print()
    if args.fold_study:
        print(fold_study())
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
