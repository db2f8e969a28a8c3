"""Shapes, inputs, timing and memory measurement for the bench."""

import dataclasses
import json
import os
import re
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
    "dense": Spec("dense", 50, 16, 128, 128, 2, True, 0.3, "all"),
    "fastrnns": Spec("fastrnns", 100, 64, 512, 512, 1, False, 0.0, "all"),
}


def custom_name(T, B, input, hidden, layers, bidirectional, dropout, lengths):
    """A readable name that encodes all eight fields, e.g. custom-50x16x128x128x2-bi-p0.3-uniform10:
    two custom shapes get the same name only when they are the same shape."""
    return (f"custom-{T}x{B}x{input}x{hidden}x{layers}-{'bi' if bidirectional else 'uni'}"
            f"-p{dropout:g}-{lengths.replace(':', '')}")


def parse_custom(text):
    """T,B,I,H,layers,bidirectional(0/1),dropout,lengths e.g. 50,16,128,128,2,1,0.3,uniform:10"""
    parts = text.split(",")
    if len(parts) != 8:
        raise ValueError(f"--custom wants T,B,I,H,layers,bidir,dropout,lengths; got {text!r}")
    t, b, i, h, layers = (int(p) for p in parts[:5])
    if parts[5] not in ("0", "1"):
        raise ValueError(f"--custom: bidirectional is 0 or 1; got {parts[5]!r} in {text!r}")
    lengths = parts[7]
    if lengths != "all" and not re.fullmatch(r"uniform:\d+", lengths):
        raise ValueError(f"--custom: lengths is all or uniform:LO; got {lengths!r} in {text!r}")
    bidir, dropout = parts[5] == "1", float(parts[6])
    return Spec(custom_name(t, b, i, h, layers, bidir, dropout, lengths), t, b, i, h, layers, bidir,
                dropout, lengths)


def unique_specs(specs):
    """Drop repeats of the same shape (same name), keeping the first: every name then stands for one
    shape and rows of different shapes never share a key."""
    seen = {}
    for s in specs:
        if s.name in seen and seen[s.name] != s:
            raise ValueError(f"two different shapes are both named {s.name!r}")
        seen.setdefault(s.name, s)
    return list(seen.values())


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


def full_length(inputs):
    """True when every sequence of every input set is T long: the competitors then get the dense
    padded tensor, as a user would pass it (no lengths, no PackedSequence)."""
    return all(bool((lengths == x.shape[0]).all()) for x, lengths in inputs)


def user_form(inputs):
    """The input sets as the bench passes them: lengths None (the dense form) when all are full
    length, else as they are (PackedSequence for nn.LSTM, lengths= for detlstm)."""
    return [(x, None) for x, _ in inputs] if full_length(inputs) else list(inputs)


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


def _status_kib(*fields):
    """The named /proc/self/status fields in KiB (0 where absent), read at one moment: one field's
    value, or a tuple of them."""
    values = dict.fromkeys(fields, 0)
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":", 1)[0]
            if name in values:
                values[name] = int(line.split()[1])
    return values[fields[0]] if len(fields) == 1 else tuple(values[k] for k in fields)


def cpu_peak_mib(competitor_name, spec, dtype_name, threads=None, mode="forward+backward"):
    """Peak RSS increase of one call in `mode` (the bench's step: forward runs under no_grad),
    measured in a fresh process (a process's own peak never goes down, so each measurement needs its
    own), at `threads` intra-op threads (default: the process's default)."""
    code = ("import json,sys; from bench.core import _memory_probe; "
            "print(json.dumps(_memory_probe(*json.loads(sys.argv[1]))))")
    arg = json.dumps([competitor_name, dataclasses.asdict(spec), dtype_name, threads, mode])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, cwd=root,
                         timeout=600)
    if run.returncode != 0:
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def _reset_peak_rss() -> bool:
    """Sets the process's recorded peak RSS (VmHWM) to its current RSS, so that the peak read after a
    call is the call's, not that of building the model or the inputs. False where Linux did not
    (no /proc/self/clear_refs, or a peak still above the current RSS after writing it)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, now = _status_kib("VmHWM", "VmRSS")
    return peak <= now


def _memory_probe(competitor_name, spec_dict, dtype_name, threads=None, mode="forward+backward"):
    from bench.competitors import all_competitors

    if threads:
        torch.set_num_threads(threads)
    spec = Spec(**spec_dict)
    dtype = getattr(torch, dtype_name)
    competitor = next(c for c in all_competitors("cpu") if c.name == competitor_name)
    with competitor.context():
        model = competitor.build(spec, "cpu", dtype)
        model.train()
        # the form the bench's own rows use (decided on their 3 input sets), on the first set
        inputs = user_form(make_inputs(spec, "cpu", dtype, 3))[:1]
        step = step_fn(competitor, model, mode)
        if not _reset_peak_rss():  # the peak would include building the model: no number, not a wrong one
            return None
        base = _status_kib("VmRSS")
        step(*inputs[0])
        return (_status_kib("VmHWM") - base) / 1024


def replace_md_section(path, start, end, text):
    """Write `text` into the Markdown file between the markers `start` and `end`, replacing that
    section where the file has it, else appending it (the file is created if missing)."""
    body = open(path).read() if os.path.exists(path) else "# Bench results\n"
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(body)


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
    try:
        import detlstm

        env["detlstm_cpu_variant"] = detlstm.set_cpu_variant("")
    except (ImportError, AttributeError, RuntimeError):
        env["detlstm_cpu_variant"] = "unknown"
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env
