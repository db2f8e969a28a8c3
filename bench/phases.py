"""python -m bench.phases: where detlstm's CPU time goes, phase by phase, against the machine's peak.

Measures the CPU's fused-multiply-add peak (GFLOP/s) at each thread count with a small C++ kernel
(bench/fma_peak.cpp: independent FMA chains on 256-bit AVX2 vectors and, where the CPU has avx512f,
512-bit ones; best of a few runs; compiled once by torch.utils.cpp_extension and cached), then runs
detlstm (float32, dropout as the shape says, the shape's lengths; the model in training mode, the
forward rows under no_grad as in python -m bench) with the kernels' per-phase clock on, and reports
per phase: ms per call, GFLOP/s (2 x multiply-adds / seconds), % of the measured peak at that thread
count and share of the whole call, plus the whole call's ms and the time outside the phases.
"""

import argparse
import ctypes
import os
import sys
import time

import torch

from bench.core import (SHAPES, environment, make_inputs, parse_custom, replace_md_section, step_fn,
                        unique_specs, user_form)

MODES = ("forward", "forward+backward")
PHASES = ("input_projection", "recurrence", "recurrence_backward", "initial_state_gradients",
          "input_gradient", "weight_gradients", "bias_gradients")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BUILD_DIR = os.path.join(HERE, "out", "fma_peak_build")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def peak_widths():
    """The vector widths the peak kernel may run here."""
    flags = cpu_flags()
    widths = []
    if {"avx2", "fma"} <= flags:
        widths.append(256)
    if "avx512f" in flags:
        widths.append(512)
    return widths


_LIB = {}


def fma_peak_library(build_dir=None):
    """The compiled peak kernel (ctypes), built once per build folder (torch's JIT builder skips the
    build when the source and flags are unchanged). Raises RuntimeError when it cannot be built."""
    build_dir = build_dir or DEFAULT_BUILD_DIR
    if build_dir in _LIB:
        return _LIB[build_dir]
    from torch.utils import cpp_extension

    os.makedirs(build_dir, exist_ok=True)
    try:
        path = cpp_extension.load(name="detlstm_bench_fma_peak",
                                  sources=[os.path.join(HERE, "fma_peak.cpp")],
                                  extra_cflags=["-O3", "-mavx2", "-mfma"], build_directory=build_dir,
                                  is_python_module=False, verbose=False)
    except Exception as err:  # no compiler, no ninja, a failed build: all say the same to the user
        raise RuntimeError(f"could not build bench/fma_peak.cpp ({type(err).__name__}: "
                           f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                           "a C++ compiler (g++ with AVX2/FMA support) and ninja are needed") from err
    lib = ctypes.CDLL(path)
    lib.detlstm_fma_peak_gflops.restype = ctypes.c_double
    lib.detlstm_fma_peak_gflops.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_double, ctypes.c_int]
    _LIB[build_dir] = lib
    return lib


def measure_peak(threads, seconds=0.05, runs=5, build_dir=None):
    """{width: best GFLOP/s on `threads` threads} for each width the CPU has, and "peak": the best of
    them. Raises RuntimeError when the kernel cannot be built or the CPU has no AVX2/FMA."""
    widths = peak_widths()
    if not widths:
        raise RuntimeError("the CPU lists neither avx2+fma nor avx512f in /proc/cpuinfo")
    lib = fma_peak_library(build_dir)
    out = {w: lib.detlstm_fma_peak_gflops(w, threads, seconds, runs) for w in widths}
    out["peak"] = max(out.values())
    return out


def measure_phases(spec, mode, repeats, warmup=2):
    """detlstm on `spec` (float32) with the per-phase clock: {"call_ms", "outside_ms", "phases":
    {phase: {"ms", "multiply_adds"}}} per call, averaged over `repeats` calls."""
    from bench.competitors import DetLSTM
    from detlstm import _ops

    competitor = DetLSTM()
    torch.manual_seed(0)
    model = competitor.build(spec, "cpu", torch.float32)
    model.train()
    inputs = user_form(make_inputs(spec, "cpu", torch.float32, 3))
    step = step_fn(competitor, model, mode)
    _ops.set_cpu_phase_timing(True)
    try:
        for k in range(warmup):
            step(*inputs[k % len(inputs)])
        _ops.take_cpu_phase_times()  # reset
        t0 = time.perf_counter()
        for k in range(repeats):
            step(*inputs[k % len(inputs)])
        wall = time.perf_counter() - t0
        taken = _ops.take_cpu_phase_times()
    finally:
        _ops.set_cpu_phase_timing(False)
    phases = {name: {"ms": 1e3 * s / repeats, "multiply_adds": ma / repeats}
              for name, (s, ma) in taken.items()}
    call_ms = 1e3 * wall / repeats
    return {"call_ms": call_ms, "outside_ms": call_ms - sum(p["ms"] for p in phases.values()),
            "input": competitor.input_form(inputs[0][1]), "phases": phases}


def gflops(p):
    return 2 * p["multiply_adds"] / (p["ms"] / 1e3) / 1e9 if p["ms"] > 0 and p["multiply_adds"] > 0 \
        else None


def run(specs, thread_counts, repeats, warmup=2, build_dir=None, log=sys.stderr):
    """Peaks and phase rows for every shape, thread count and mode; restores the thread count."""
    start_threads = torch.get_num_threads()
    result = {"peaks": {}, "rows": [], "peak_error": None, "threads": thread_counts}
    try:
        for t in thread_counts:
            try:
                result["peaks"][t] = measure_peak(t, build_dir=build_dir)
            except RuntimeError as err:
                result["peak_error"] = str(err)
                print(f"FMA peak not measured: {err}; the % of peak column stays empty", file=log)
                break
        for spec in specs:
            for t in thread_counts:
                torch.set_num_threads(t)
                for mode in MODES:
                    row = measure_phases(spec, mode, repeats, warmup)
                    peak = result["peaks"].get(t, {}).get("peak")
                    for p in row["phases"].values():
                        p["gflops"] = gflops(p)
                        p["pct_peak"] = 100 * p["gflops"] / peak if p["gflops"] and peak else None
                        p["pct_call"] = 100 * p["ms"] / row["call_ms"] if row["call_ms"] > 0 else None
                    row.update(shape=spec.name, threads=t, mode=mode)
                    result["rows"].append(row)
                    print(f"  {spec.name:10s} {t}t {mode:17s} {row['call_ms']:9.3f} ms/call", file=log)
    finally:
        torch.set_num_threads(start_threads)
    return result


def _f(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def report(result, env, argv):
    head = (f"Measured {env['date']} on {env['cpu']}, torch {env['torch']}, detlstm CPU variant "
            f"{env.get('detlstm_cpu_variant', '?')}, git {env['git']}, "
            f"`python -m bench.phases {' '.join(argv)}`.")
    lines = [head, ""]
    if result["peak_error"]:
        lines += [f"FMA peak not measured: {result['peak_error']}.", ""]
    if result["peaks"]:
        widths = [w for w in (256, 512) if any(w in p for p in result["peaks"].values())]
        lines += ["**FMA peak** (bench/fma_peak.cpp, independent FMA chains, best of 5 runs; GFLOP/s)", "",
                  "| threads | " + " | ".join(f"{w}-bit" for w in widths) + " | peak used |",
                  "|---:|" + "---:|" * (len(widths) + 1)]
        for t, p in result["peaks"].items():
            lines.append(f"| {t} | " + " | ".join(_f(p.get(w)) for w in widths) + f" | {_f(p['peak'])} |")
        lines.append("")
    lines += ["**detlstm's CPU phases** (float32, per call; GFLOP/s = 2 x multiply-adds / time; % of "
              "peak = of the FMA peak at that thread count; outside phases = the call's wall time less "
              "the phases: Python, autograd, allocation, dropout masks, layout)", "",
              "| shape | threads | mode | input | phase | ms/call | % of call | GFLOP/s | % of peak |",
              "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lead = f"| {r['shape']} | {r['threads']} | {r['mode']} | {r['input']} |"
        for name in PHASES:
            p = r["phases"].get(name)
            if p is None or (p["ms"] == 0 and p["multiply_adds"] == 0):
                continue
            lines.append(f"{lead} {name} | {_f(p['ms'], 3)} | {_f(p['pct_call'])} | {_f(p['gflops'])} | "
                         f"{_f(p['pct_peak'])} |")
        for name in sorted(set(r["phases"]) - set(PHASES)):  # phases a newer build may add
            p = r["phases"][name]
            lines.append(f"{lead} {name} | {_f(p['ms'], 3)} | {_f(p['pct_call'])} | {_f(p['gflops'])} | "
                         f"{_f(p['pct_peak'])} |")
        out_pct = 100 * r["outside_ms"] / r["call_ms"] if r["call_ms"] > 0 else None
        lines.append(f"{lead} outside phases | {_f(r['outside_ms'], 3)} | {_f(out_pct)} | | |")
        lines.append(f"{lead} **whole call** | {_f(r['call_ms'], 3)} | 100.0 | | |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="cpu,dense,fastrnns,tagger",
                   help=f"comma-separated reference shapes ({', '.join(SHAPES)})")
    p.add_argument("--custom", action="append", default=[],
                   help="extra shape T,B,I,H,layers,bidir(0/1),dropout,lengths(all|uniform:LO)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per shape, thread count and mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--build-dir", default=None,
                   help=f"where the peak kernel is built and cached (default {DEFAULT_BUILD_DIR})")
    p.add_argument("--results-md", default=None,
                   help="also write the report into this Markdown file between "
                        "<!-- phases:cpu:start --> and <!-- phases:cpu:end -->")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    unknown = [n for n in args.shapes.split(",") if n and n not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    specs = unique_specs([SHAPES[n] for n in args.shapes.split(",") if n] +
                         [parse_custom(c) for c in args.custom])
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",") if t))
    if not specs or not threads or min(threads) < 1 or args.repeats < 1:
        raise SystemExit("need at least one shape, positive thread counts and --repeats >= 1")
    result = run(specs, threads, args.repeats, args.warmup, args.build_dir)
    text = report(result, environment("cpu"), argv)
    if args.results_md:
        replace_md_section(args.results_md, "<!-- phases:cpu:start -->", "<!-- phases:cpu:end -->", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
