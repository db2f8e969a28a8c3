"""Shapes, inputs, timing and memory measurement for the bench."""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import torch


@dataclasses.dataclass
class Spec:
    name: str
    T: int
    B: int
    input: int
    hidden: int
    layers: int
    bidirectional: bool
    dropout: float
    lengths: str  # "all" (every sequence T long) or "uniform:LO" (uniform in [LO, T])

    def make_lengths(self, generator):
        if self.lengths == "all":
            return torch.full((self.B,), self.T, dtype=torch.int64)
        low = int(self.lengths.split(":")[1])
        return torch.randint(low, self.T + 1, (self.B,), generator=generator)


# DESIGN.md's reference shapes
SHAPES = {
    "tagger": Spec("tagger", 100, 64, 256, 256, 2, True, 0.3, "uniform:25"),
    "large": Spec("large", 100, 64, 1024, 1024, 2, True, 0.3, "all"),
    "stream": Spec("stream", 500, 8, 512, 512, 1, True, 0.0, "all"),
    "cpu": Spec("cpu", 50, 16, 128, 128, 2, True, 0.3, "uniform:10"),
}


def parse_custom(text):
    """T,B,I,H,layers,bidirectional(0/1),dropout,lengths e.g. 50,16,128,128,2,1,0.3,uniform:10"""
    parts = text.split(",")
    if len(parts) != 8:
        raise ValueError(f"--custom wants T,B,I,H,layers,bidir,dropout,lengths; got {text!r}")
    t, b, i, h, layers = (int(p) for p in parts[:5])
    return Spec(f"custom-{t}x{b}x{i}x{h}x{layers}", t, b, i, h, layers, parts[5] == "1",
                float(parts[6]), parts[7])


def make_inputs(spec, device, dtype, count, seed=0):
    """`count` input sets (rotated between repeats so caches do not flatter anyone)."""
    g = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(count):
        lengths = spec.make_lengths(g)
        x = torch.randn(spec.T, spec.B, spec.input, generator=g, dtype=dtype)
        mask = (torch.arange(spec.T).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)
        sets.append(((x * mask).to(device), lengths))
    return sets


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def step_fn(competitor, model, mode):
    if mode == "forward":
        def step(x, lengths):
            with torch.no_grad():
                competitor.run(model, x, lengths)
    else:
        def step(x, lengths):
            x = x.requires_grad_()
            out, h, c = competitor.run(model, x, lengths)
            (out.sum() + h.sum() + c.sum()).backward()
            x.grad = None
            for p in model.parameters():
                p.grad = None
    return step


def median_ms(step, inputs, device, warmup, repeats):
    """Median wall time of one call in ms: CUDA events on the GPU, a monotonic clock on the CPU."""
    for k in range(warmup):
        step(*inputs[k % len(inputs)])
    _sync(device)
    times = []
    for k in range(repeats):
        x, lengths = inputs[k % len(inputs)]
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(x, lengths)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step(x, lengths)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def cuda_peak_mib(step, inputs):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(*inputs[0])
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_peak_mib(competitor_name, spec, dtype_name):
    """Peak RSS increase of one forward+backward call, measured in a fresh process (a process's own
    peak never goes down, so each measurement needs its own)."""
    code = ("import json,sys; from bench.core import _memory_probe; "
            "print(json.dumps(_memory_probe(*json.loads(sys.argv[1]))))")
    arg = json.dumps([competitor_name, dataclasses.asdict(spec), dtype_name])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, cwd=root,
                         timeout=600)
    if run.returncode != 0:
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def _memory_probe(competitor_name, spec_dict, dtype_name):
    from bench.competitors import all_competitors

    spec = Spec(**spec_dict)
    dtype = getattr(torch, dtype_name)
    competitor = next(c for c in all_competitors("cpu") if c.name == competitor_name)
    with competitor.context():
        model = competitor.build(spec, "cpu", dtype)
        model.train()
        inputs = make_inputs(spec, "cpu", dtype, 1)
        step = step_fn(competitor, model, "forward+backward")
        base = _status_kib("VmRSS")
        step(*inputs[0])
        return (_status_kib("VmHWM") - base) / 1024


def environment(device):
    import datetime
    import platform

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    # DETLSTM_GIT names the commit where the checkout's own .git cannot (the device machine gets a
    # copy of the working tree whose .git may stand at an older commit)
    env["git"] = os.environ.get("DETLSTM_GIT", "")
    try:
        env["git"] = env["git"] or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        env["git"] = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            env["cpu"] = f"{names[0]} x{len(names)}"
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env
