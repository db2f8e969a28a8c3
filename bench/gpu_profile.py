"""Where the time goes: device time per kernel of forward + backward calls, for detlstm and cuDNN
(strict float32), beside the floors that bound any implementation (device/METHOD.md's two numbers,
plus the recurrence's own latency floor).

    python -m bench.gpu_profile [--device cuda] [--shapes tagger,large] [--calls 3] [--out FILE]

Floors, per forward + backward call (the backward does twice the forward's products):
- arithmetic: 3 x 2 x (valid tokens) x sum over layers and directions of 4H x (K + R) flops, over
  the measured float32 (no TF32) matrix-product rate of this device;
- memory: the activations the forward writes and the backward reads back (gates 4H, cells H,
  output R per valid token, layer and direction), the input and its gradient, the weights and their
  gradients, once each, over the measured device-to-device copy rate;
- latency: each step's sums depend on the step before. With ARITHMETIC.md v2's chunked sums a sum
  of n terms is at best one 64-term fma chain (chunks in parallel) and a fold of ceil(n/64) - 1 adds:
  steps x layers x (that for R terms forward, and for 4H terms backward) x the fma/add latency (4
  cycles) at the clock. Nothing runs faster than the largest.
On the CPU (`--device cpu`) the same table lists CPU operators; that mode exists to test the script.
"""

import argparse
import statistics
import sys
import time

import torch

import detlstm

from .competitors import DetLSTM, TorchLSTM
from .core import SHAPES, make_inputs, parse_custom, step_fn

FMA_LATENCY_CYCLES = 4


def matmul_rate(device):
    """Measured float32 (TF32 off) matrix-product flop/s."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        n = 4096 if device == "cuda" else 512
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        return 2 * n**3 / _median_seconds(lambda: a @ b, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def copy_rate(device):
    """Measured bytes/s of a large copy, counting bytes read plus bytes written."""
    n = (1 << 28) if device == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return 2 * n / _median_seconds(lambda: dst.copy_(src), device)


def _median_seconds(fn, device, repeats=9):
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floors_ms(spec, tokens, flop_rate, byte_rate, clock_hz):
    D = 2 if spec.bidirectional else 1
    H = R = spec.hidden
    flops = params = 0
    for layer in range(spec.layers):
        K = spec.input if layer == 0 else D * R
        flops += 3 * 2 * tokens * D * 4 * H * (K + R)
        params += D * (4 * H * (K + R) + 8 * H)
    activations = tokens * spec.layers * D * (4 * H + H + R)
    byte_count = 4 * (2 * activations + 2 * tokens * spec.input + 2 * params)
    def depth(n):  # a chunked sum's dependent operations: one chunk's chain, then the fold
        return min(n, 64) + (n + 63) // 64 - 1

    latency = spec.T * spec.layers * (depth(R) + depth(4 * H)) * FMA_LATENCY_CYCLES / clock_hz
    return {"arithmetic": 1e3 * flops / flop_rate, "memory": 1e3 * byte_count / byte_rate,
            "latency": 1e3 * latency}


def kernel_table(competitor, spec, device, calls):
    """(total ms per call, [(name, ms per call, launches per call)]) from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with competitor.context():
        torch.manual_seed(0)
        model = competitor.build(spec, device, torch.float32)
        model.train()
        inputs = make_inputs(spec, device, torch.float32, 2)
        step = step_fn(competitor, model, "forward+backward")
        for k in range(2):
            step(*inputs[k % 2])
        if device == "cuda":
            torch.cuda.synchronize()
        activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
        with profile(activities=activities) as prof:
            for k in range(calls):
                step(*inputs[k % 2])
            if device == "cuda":
                torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        if device == "cuda":
            if str(getattr(evt, "device_type", "")).split(".")[-1] != "CUDA":
                continue
            us = getattr(evt, "self_device_time_total", None)
            us = evt.self_cuda_time_total if us is None else us
        else:
            us = evt.self_cpu_time_total
        if us > 0:
            rows.append((evt.key, us / 1e3 / calls, evt.count / calls))
    rows.sort(key=lambda r: -r[1])
    return sum(r[1] for r in rows), rows


def short(name, width=72):
    name = name.replace("detlstm::cuda::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", default="tagger,large")
    ap.add_argument("--custom", action="append", default=[], help="T,B,I,H,layers,bidir,dropout,lengths")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--variants", default="",
                    help="CUDA launch shapes to profile detlstm under (indices into "
                         "csrc/cuda/launch_shapes.h's table; default: every shape)")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    device = args.device
    specs = [SHAPES[s] for s in args.shapes.split(",") if s] + [parse_custom(c) for c in args.custom]
    competitors = [DetLSTM()]
    if device == "cuda":
        competitors.append(TorchLSTM("cudnn-fp32", "cuDNN, allow_tf32=False", tf32=False))
    flop_rate, byte_rate = matmul_rate(device), copy_rate(device)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        clock_hz = getattr(props, "clock_rate", 1_755_000) * 1e3  # kHz; H100 SXM boost if absent
        where = f"{props.name}, {props.multi_processor_count} SMs"
    else:
        clock_hz, where = 2.5e9, "CPU"
    lines = [f"# Kernel time per forward+backward call ({where}, torch {torch.__version__})", "",
             f"measured: float32 matmul {flop_rate / 1e12:.1f} TFLOP/s, copy {byte_rate / 1e12:.2f} TB/s "
             f"(read + write), clock {clock_hz / 1e9:.2f} GHz", ""]

    def write_out():
        # after every table, so that a run stopped by its time limit keeps the tables it finished
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")
    for spec in specs:
        g = torch.Generator().manual_seed(0)
        tokens = int(spec.make_lengths(g).sum())
        fl = floors_ms(spec, tokens, flop_rate, byte_rate, clock_hz)
        lines += [f"## {spec.name} ({tokens} valid tokens)", "",
                  "floors (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in fl.items()), ""]
        for comp in competitors:
            variants = [None]
            if comp.name == "detlstm" and device == "cuda":
                variants = ([int(v) for v in args.variants.split(",") if v]
                            or list(range(len(detlstm._ops.cuda_launch_shapes()))))
            for variant in variants:
                label = comp.name if variant is None else (
                    f"{comp.name}, launch shape {variant} "
                    f"({detlstm._ops.cuda_launch_shapes()[variant]})")
                previous = None if variant is None else detlstm.set_cuda_launch_variant(variant)
                try:
                    total, rows = kernel_table(comp, spec, device, args.calls)
                finally:
                    if previous is not None:
                        detlstm.set_cuda_launch_variant(previous)
                lines += [f"**{label}**: {total:.3f} ms of kernels per call, "
                          f"{total / max(fl.values()):.1f}x the largest floor", "",
                          "| kernel | ms/call | launches/call | ms/launch |", "|---|---:|---:|---:|"]
                for name, ms, count in rows[: args.top]:
                    lines.append(f"| `{short(name)}` | {ms:.3f} | {count:.0f} | {ms / max(count, 1):.4f} |")
                lines.append("")
                write_out()
    print("\n".join(lines))
    write_out()
    return 0


if __name__ == "__main__":
    sys.exit(main())
