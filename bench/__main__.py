"""python -m bench: detlstm against torch.nn.LSTM (CPU native, cuDNN in three settings) and the
two-one-way-LSTMs workaround, on the same work, in one run.

Reports valid tokens per second (sum of lengths / time), ms per call, peak memory and each
competitor's throughput relative to detlstm (per shape, mode, dtype and thread count), as a Markdown
table (stdout), a JSON file with every number and the environment, and PNG plots. See
bench/RESULTS.md for measured numbers.

Every competitor gets the input a user would pass: the dense padded tensor when every sequence is
full length, else a PackedSequence (nn.LSTM, cuDNN, two-one-way) or lengths= (detlstm); each row
names its form (input) and the path nn.LSTM took (path: oneDNN or ATen on the CPU, cuDNN on the
GPU, seen by torch.profiler in one untimed call). On the CPU the reference shapes run at each
--threads count; the sweeps and studies run at the process's thread count.
"""

import argparse
import dataclasses
import json
import os
import sys

import torch

from bench.competitors import all_competitors, path_taken
from bench.core import (SHAPES, cpu_peak_mib, cuda_peak_mib, environment, make_inputs, median_ms,
                        parse_custom, replace_md_section, step_fn, unique_specs, user_form)

MODES = ("forward", "forward+backward")
# batch: the first shape over --batch-sweep sizes; hidden: over hidden (= input) sizes; lengths: equal
# against spread lengths at the same tokens. The sweeps time each of --modes.
STUDIES = ("batch", "hidden", "lengths")
DEFAULT_SHAPES = {"cpu": "cpu,dense,fastrnns,tagger", "cpu-quick": "cpu,dense",
                  "cuda": "tagger,large,stream", "cuda-quick": "tagger,large,stream"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated reference shapes ({', '.join(SHAPES)}); default: "
                        f"{DEFAULT_SHAPES['cpu']} on the CPU ({DEFAULT_SHAPES['cpu-quick']} with "
                        f"--quick), {DEFAULT_SHAPES['cuda']} on the GPU")
    p.add_argument("--custom", action="append", default=[],
                   help="extra shape T,B,I,H,layers,bidir(0/1),dropout,lengths(all|uniform:LO)")
    p.add_argument("--modes", default=",".join(MODES), help="forward, forward+backward")
    p.add_argument("--dtypes", default="float32", help="float32, float64")
    p.add_argument("--threads", default=None,
                   help="CPU only: comma-separated intra-op thread counts to run the shapes at "
                        "(default 1,2); on CUDA ignored (one run at the current count)")
    p.add_argument("--competitors", default=None, help="comma-separated names (default: all)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--out", default=os.path.join("bench", "out"), help="folder for JSON and plots")
    p.add_argument("--quick", action="store_true",
                   help="small repeats and sweeps, and on the CPU the shapes "
                        f"{DEFAULT_SHAPES['cpu-quick']} unless --shapes says otherwise (make bench)")
    p.add_argument("--no-studies", action="store_true", help="skip the sweeps and studies")
    p.add_argument("--studies", default=",".join(STUDIES),
                   help=f"comma-separated studies to run after the shapes ({', '.join(STUDIES)}; "
                        "default: all); --no-studies runs none")
    p.add_argument("--batch-sweep", default=None,
                   help="batch sizes of the batch sweep (default 4,16,64,256; 4,16 with --quick)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--results-md", default=None,
                   help="also write the report into this Markdown file, replacing its section for "
                        "this device")
    return p.parse_args(argv)


def measure(competitor, spec, device, dtype, mode, warmup, repeats, memory=False, threads=None):
    """One row: the median time of `repeats` calls on the shape's inputs in the user's form, the form
    and the path taken (one more call under the profiler, after the timed ones) and, with `memory`,
    the peak memory of one call in this mode."""
    torch.manual_seed(0)
    with competitor.context():
        model = competitor.build(spec, device, dtype)
        model.train()
        inputs = make_inputs(spec, device, dtype, 3)
        tokens = sum(int(lengths.sum()) for _, lengths in inputs) / len(inputs)
        inputs = user_form(inputs)
        form = competitor.input_form(inputs[0][1])
        step = step_fn(competitor, model, mode)
        try:
            ms, samples = median_ms(step, inputs, device, warmup, repeats)
            taken = path_taken(competitor, step, *inputs[0], device)
        except RuntimeError as err:  # e.g. a setting the library refuses
            return {"error": str(err).splitlines()[0], "input": form}
        row = {"ms": ms, "tokens_per_s": tokens / (ms / 1e3), "samples_ms": samples, "input": form,
               "path": taken}
        if memory:
            row["peak_mib"] = cuda_peak_mib(step, inputs) if device == "cuda" else \
                cpu_peak_mib(competitor.name, spec, str(dtype).split(".")[1], threads, mode)
        return row


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def table(rows, title):
    lines = [f"**{title}**", "",
             "| shape | mode | dtype | threads | competitor | input | path | ms/call | tokens/s | "
             "vs detlstm | peak MiB |",
             "|---|---|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        head = (f"| {r['shape']} | {r['mode']} | {r['dtype']} | {r.get('threads', '-')} | "
                f"{r['competitor']} | {r.get('input', '-')} |")
        if "error" in r:
            lines.append(f"{head} | error: {r['error'][:60]} | | | |")
            continue
        lines.append(f"{head} {r.get('path', '-')} | {fmt(r['ms'], 2)} | {fmt(r['tokens_per_s'], 0)} | "
                     f"{fmt(r.get('vs_detlstm'), 2)}x | {fmt(r.get('peak_mib'))} |")
    return "\n".join(lines)


def ratio_key(r):
    """Rows compared with each other: the same shape, mode, dtype and thread count."""
    return r["shape"], r["mode"], r["dtype"], r.get("threads")


def add_ratios(rows):
    base = {ratio_key(r): r for r in rows if r["competitor"] == "detlstm" and "ms" in r}
    for r in rows:
        ref = base.get(ratio_key(r))
        if ref and "ms" in r:
            r["vs_detlstm"] = r["tokens_per_s"] / ref["tokens_per_s"]


def sweep(competitors, base, field, values, modes, device, dtype, warmup, repeats):
    """Rows of the base shape at each value of `field`, in each mode, with vs_detlstm as the shapes'
    rows have it (tokens/s over detlstm's at the same value and mode)."""
    out = []
    for v in values:
        spec = dataclasses.replace(base, name=f"{base.name}-{field}{v}", **{field: v})
        if field == "hidden":
            spec = dataclasses.replace(spec, input=v)
        for mode in modes:
            out += [{"competitor": c.name, field: v, "mode": mode, "shape": spec.name,
                     "dtype": str(dtype).split(".")[1],
                     **measure(c, spec, device, dtype, mode, warmup, repeats)} for c in competitors]
    add_ratios(out)
    return out


def parse_studies(args):
    """The studies to run: none with --no-studies, else --studies (checked against STUDIES)."""
    if args.no_studies:
        return []
    wanted = [s for s in args.studies.split(",") if s]
    unknown = [s for s in wanted if s not in STUDIES]
    if unknown:
        raise SystemExit(f"--studies: unknown {', '.join(unknown)} (known: {', '.join(STUDIES)})")
    return wanted


def parse_batch_sweep(text, quick):
    """--batch-sweep as positive batch sizes in the order given (default 4,16,64,256; quick 4,16)."""
    if text is None:
        return [4, 16] if quick else [4, 16, 64, 256]
    try:
        sizes = [int(b) for b in text.split(",") if b]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--batch-sweep wants positive batch sizes, e.g. 1,2,4,8,16; got {text!r}")
    return list(dict.fromkeys(sizes))


def variable_length_study(competitors, base, device, dtype, warmup, repeats):
    """Same total tokens, all sequences length T vs lengths spread over [T/4, T]: time should track
    the sum of lengths, not batch x T."""
    T = base.T
    equal = dataclasses.replace(base, name="equal", lengths="all")
    # 1.6x the rows, lengths uniform in [T/4, T] (mean 5T/8): the same tokens on average
    spread = dataclasses.replace(base, name="spread", B=round(base.B * 1.6), lengths=f"uniform:{T // 4}")
    out = []
    for c in competitors:
        a = measure(c, equal, device, dtype, "forward+backward", warmup, repeats)
        b = measure(c, spread, device, dtype, "forward+backward", warmup, repeats)
        if "ms" in a and "ms" in b:
            out.append({"competitor": c.name, "equal_ms": a["ms"], "spread_ms": b["ms"],
                        "equal_input": a["input"], "spread_input": b["input"],
                        "equal_path": a["path"], "spread_path": b["path"],
                        "equal_tokens_per_s": a["tokens_per_s"], "spread_tokens_per_s": b["tokens_per_s"],
                        "time_ratio": b["ms"] / a["ms"],
                        "throughput_ratio": b["tokens_per_s"] / a["tokens_per_s"]})
    return out


def plots(result, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for key, field, label in (("batch_sweep", "B", "batch size"), ("hidden_sweep", "hidden", "hidden size")):
        rows = [r for r in result.get(key, []) if "tokens_per_s" in r
                and r.get("mode", "forward+backward") == "forward+backward"]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in dict.fromkeys(r["competitor"] for r in rows):
            pts = [(r[field], r["tokens_per_s"]) for r in rows if r["competitor"] == name]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel("valid tokens / s (forward + backward)")
        ax.set_title(f"{result['env']['device']}: throughput vs {label}")
        ax.legend()
        ax.grid(alpha=0.3)
        path = os.path.join(out_dir, f"{key}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for shape in dict.fromkeys(r["shape"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["shape"] == shape and "tokens_per_s" in r]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{r['competitor']}\n{r['mode']}\n{r.get('threads', '')} thr" for r in rows]
        ax.bar(range(len(rows)), [r["tokens_per_s"] for r in rows],
               color=["C0" if r["competitor"] == "detlstm" else "C7" for r in rows])
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("valid tokens / s")
        ax.set_title(f"{shape} on {result['env']['device']}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"shape_{shape}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report(result):
    env = result["env"]
    head = (f"Measured {env['date']} on {env.get('gpu', env['cpu'])} ({env['device']}), "
            f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if 'cuda' in env else "")
            + f", detlstm CPU variant {env.get('detlstm_cpu_variant', '?')}, thread counts "
            f"{', '.join(str(t) for t in result.get('threads', [env['threads']]))} (sweeps and studies at "
            f"{result.get('study_threads', env['threads'])}), git {env['git']}, "
            f"`python -m bench {' '.join(result['argv'])}`.")
    parts = [head, "", table(result["rows"], "Reference shapes (median of repeats; vs detlstm = "
                             "competitor tokens/s / detlstm tokens/s at the same shape, mode, dtype "
                             "and threads; input: dense, packed (PackedSequence) or lengths (detlstm's "
                             "lengths=); path: what the call ran; peak: one call's memory above what "
                             "was allocated before it, the caching allocator's on the GPU, RSS in a "
                             "fresh process on the CPU; forward runs under no_grad)")]
    if result.get("variable_length"):
        parts += ["", "**Variable lengths, same total tokens** (forward+backward): time with lengths "
                  "uniform in [T/4, T] over time with all lengths T, at 1.6x the rows (all T runs in "
                  "the dense form, the spread in the packed/lengths form)", "",
                  "| competitor | all T: ms | spread: ms | time ratio | tokens/s ratio |", "|---|---:|---:|---:|---:|"]
        for r in result["variable_length"]:
            parts.append(f"| {r['competitor']} | {fmt(r['equal_ms'], 2)} | {fmt(r['spread_ms'], 2)} | "
                         f"{r['time_ratio']:.2f} | {r['throughput_ratio']:.2f} |")
    for key, field in (("batch_sweep", "B"), ("hidden_sweep", "hidden")):
        parts += sweep_tables(result.get(key) or [], field)
    return "\n".join(parts)


def sweep_tables(rows, field):
    """One table per mode: a row per competitor, a column per value; each cell tokens/s and, beside
    a competitor's, its tokens/s over detlstm's."""
    parts = []
    values = list(dict.fromkeys(r[field] for r in rows))
    for mode in dict.fromkeys(r.get("mode", "forward+backward") for r in rows):
        in_mode = [r for r in rows if r.get("mode", "forward+backward") == mode]
        parts += ["", f"**Sweep over {field}** ({mode}; tokens/s, and vs detlstm)", "",
                  "| competitor | " + " | ".join(str(v) for v in values) + " |",
                  "|---|" + "---:|" * len(values)]
        for name in dict.fromkeys(r["competitor"] for r in in_mode):
            cells = []
            for v in values:
                r = next((r for r in in_mode if r["competitor"] == name and r[field] == v), {})
                cell = fmt(r.get("tokens_per_s"), 0)
                if name != "detlstm" and r.get("vs_detlstm") is not None:
                    cell += f" ({r['vs_detlstm']:.2f}x)"
                cells.append(cell)
            parts.append(f"| {name} | " + " | ".join(cells) + " |")
    return parts


def write_results_md(path, device, text):
    replace_md_section(path, f"<!-- bench:{device}:start -->", f"<!-- bench:{device}:end -->", text)


def parse_threads(text, device):
    """The thread counts to run the shapes at: the list on the CPU (default 1,2), the current count
    alone on CUDA."""
    if device == "cuda":
        return [torch.get_num_threads()]
    counts = [int(t) for t in (text or "1,2").split(",") if t]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads wants positive counts; got {text!r}")
    return list(dict.fromkeys(counts))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    repeats = args.repeats if args.repeats is not None else (3 if quick else 15)
    names = args.shapes if args.shapes is not None else \
        DEFAULT_SHAPES[device + ("-quick" if quick else "")]
    unknown = [n for n in names.split(",") if n and n not in SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    specs = unique_specs([SHAPES[n] for n in names.split(",") if n] +
                         [parse_custom(c) for c in args.custom])
    if not specs:
        raise SystemExit("no shapes: give --shapes or --custom")
    modes = [m for m in args.modes.split(",") if m]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",") if d]
    thread_counts = parse_threads(args.threads, device)
    studies = parse_studies(args)
    batches = parse_batch_sweep(args.batch_sweep, quick)
    competitors = all_competitors(device)
    if args.competitors:
        wanted = args.competitors.split(",")
        competitors = [c for c in competitors if c.name in wanted]
    os.makedirs(args.out, exist_ok=True)

    start_threads = torch.get_num_threads()
    result = {"env": environment(device), "argv": argv, "rows": [], "threads": thread_counts,
              "study_threads": start_threads,
              "competitors": {c.name: c.note for c in competitors}}
    try:
        for spec in specs:
            for dtype in dtypes:
                for mode in modes:
                    for threads in thread_counts:
                        if device == "cpu":
                            torch.set_num_threads(threads)
                        for c in competitors:
                            row = measure(c, spec, device, dtype, mode, warmup, repeats, memory=True,
                                          threads=threads if device == "cpu" else None)
                            row.update(shape=spec.name, mode=mode, dtype=str(dtype).split(".")[1],
                                       threads=threads, competitor=c.name)
                            result["rows"].append(row)
                            print(f"  {spec.name:10s} {mode:17s} {threads}t {c.name:12s} "
                                  f"{fmt(row.get('ms'), 2):>10s} ms {row.get('input', '')} "
                                  f"{row.get('path', '')} {row.get('error', '')}", file=sys.stderr)
    finally:
        torch.set_num_threads(start_threads)
    add_ratios(result["rows"])

    base = specs[0]
    small = dataclasses.replace(base, T=min(base.T, 30 if quick else base.T))
    hiddens = [64, 128] if quick else [64, 128, 256, 512, 1024]
    study_repeats = max(2, repeats // 2) if quick else repeats
    study = (competitors, small)
    if "batch" in studies:
        result["batch_sweep"] = sweep(*study, "B", batches, modes, device, dtypes[0], warmup, study_repeats)
    if "hidden" in studies:
        result["hidden_sweep"] = sweep(*study, "hidden", hiddens, modes, device, dtypes[0], warmup,
                                       study_repeats)
    if "lengths" in studies:
        result["variable_length"] = variable_length_study(*study, device, dtypes[0], warmup, study_repeats)

    with open(os.path.join(args.out, f"results_{device}.json"), "w") as f:
        json.dump(result, f, indent=1)
    if not args.no_plots:
        result["plots"] = plots(result, args.out)
    text = report(result)
    with open(os.path.join(args.out, f"report_{device}.md"), "w") as f:
        f.write(text + "\n")
    if args.results_md:
        write_results_md(args.results_md, device, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
