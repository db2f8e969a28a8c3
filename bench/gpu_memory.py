"""Where one training call's GPU memory goes at its peak.

Issue 13 asks for a training call's peak at most 1.2x cuDNN's at the large shape; the bench reports
the two totals (torch.cuda.max_memory_allocated over one forward + backward) and nothing about their
parts. This records the CUDA caching allocator's history over the bench's own step (same model,
same inputs, after one warm-up call), replays the allocations and frees to their highest total, and
lists the blocks live there by size and by the frame that allocated them, largest total first (an
operator's scratch shows as the operator's call, or with --stacks all as the C++ function that
asked for it).

    python -m bench.gpu_memory --shapes large --competitors detlstm,cudnn-fp32 >> report.md
"""

import argparse
import collections
import sys

import torch

from bench.competitors import all_competitors
from bench.core import SHAPES, make_inputs, step_fn, user_form


def live_at_peak(events):
    """The highest total of live blocks over `events`, and the blocks live at that point.

    events: (action, addr, size, label) in the allocator's order. "alloc" makes a block live and
    "free_completed" ends it, where torch's own statistics drop it (torch.cuda._memory_viz counts
    the same way); "free_requested" comes before it, earlier when another stream still used the
    block. Returns (peak_bytes, {addr: (size, label)})."""
    live, total, peak, at_peak = {}, 0, 0, {}
    for action, addr, size, label in events:
        if action == "alloc":
            live[addr] = (size, label)
            total += size
        elif action == "free_completed" and addr in live:
            total -= live.pop(addr)[0]
        if total > peak:
            peak, at_peak = total, dict(live)
    return peak, at_peak


def by_label(blocks):
    """[(label, block size, count)], largest total first, of the blocks {addr: (size, label)}:
    blocks of one size from one place together (with Python frames alone, every buffer an operator
    allocates has the operator's call as its place, and its size tells them apart)."""
    counts = collections.Counter((label, size) for size, label in blocks.values())
    return [(label, size, n) for (label, size), n in
            sorted(counts.items(), key=lambda item: -item[0][1] * item[1])]


def frame_label(frames):
    """Where a block was allocated, from its frames (innermost first): the innermost frame of
    detlstm's C++ or Python, else of the bench, else the innermost frame at all."""
    def text(f):
        return f"{f.get('name', '?')} ({f.get('filename', '?').rsplit('/', 1)[-1]}:{f.get('line', 0)})"

    for wanted in ("detlstm", "bench"):
        for f in frames:
            in_torch = "/torch/" in f.get("filename", "")  # a checkout named detlstm holds torch too
            if wanted in f.get("name", "") or (f"/{wanted}/" in f.get("filename", "") and not in_torch):
                return text(f)
    return text(frames[0]) if frames else "(no frames)"


def record_step(step, inputs, stacks):
    """(peak bytes from the replay, max_memory_allocated - base, by_label's list) of one call of
    step(*inputs), recorded after a warm-up call; stacks: "python", or "all" for C++ frames too
    (symbolising them can take minutes)."""
    step(*inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks=stacks)
    except TypeError:  # older keyword set
        torch.cuda.memory._record_memory_history(True)
    step(*inputs)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    events = [(e["action"], e["addr"], e["size"], frame_label(e.get("frames", []))) for e in trace
              if e["action"] in ("alloc", "free_completed")]
    peak, blocks = live_at_peak(events)
    return peak, torch.cuda.max_memory_allocated() - base, by_label(blocks)


def report(shape, competitor_name, stacks="python", rows=15):
    spec = SHAPES[shape]
    competitor = next(c for c in all_competitors("cuda") if c.name == competitor_name)
    with competitor.context():
        model = competitor.build(spec, "cuda", torch.float32)
        model.train()
        inputs = user_form(make_inputs(spec, "cuda", torch.float32, 1))[0]
        peak, allocated, groups = record_step(step_fn(competitor, model, "forward+backward"), inputs,
                                              stacks)
    mib = 2.0 ** 20
    lines = [f"### {shape}, {competitor_name}: {peak / mib:,.1f} MiB live at the peak "
             f"(max_memory_allocated - base: {allocated / mib:,.1f} MiB)", "",
             "| MiB | blocks x MiB each | allocated in |", "|---:|---|---|"]
    lines += [f"| {size * n / mib:,.1f} | {n} x {size / mib:,.2f} | {label} |"
              for label, size, n in groups[:rows]]
    rest = groups[rows:]
    if rest:
        lines.append(f"| {sum(s * n for _, s, n in rest) / mib:,.1f} | {sum(n for _, _, n in rest)} "
                     f"blocks | {len(rest)} other sizes and places |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="large")
    parser.add_argument("--competitors", default="detlstm,cudnn-fp32")
    parser.add_argument("--stacks", default="python", choices=["python", "all"],
                        help="frames kept per allocation; all adds C++ (slow to symbolise)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench.gpu_memory: needs a CUDA device (torch.cuda.is_available() is False)")
    print("## Peak memory of a training call, by where it was allocated (bench.gpu_memory)\n")
    for shape in args.shapes.split(","):
        for name in args.competitors.split(","):
            print(report(shape, name, args.stacks))


if __name__ == "__main__":
    main()
