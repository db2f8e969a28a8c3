"""The reproducibility report (python -m examples.repro --help).

Runs each example twice with detlstm and twice with torch.nn.LSTM under the same seeds (and, with
--threads, once more at another thread count), and reports for every pair: the first step at which
the two loss curves differ (none when the runs are bit-identical) and the final parameter hashes.
With a CUDA GPU it adds cuDNN's runs and detlstm's CPU-vs-GPU comparison. Loss curves are plotted
overlaid; the verdicts are computed from the logged numbers, never assumed.
"""

import argparse
import os

import torch

from examples import seq2seq, tagger
from examples.common import plot_lines, save_json


def example_runners(steps):
    return {
        "tagger": lambda lstm, device: tagger.train(lstm, steps=steps, device=device,
                                                    show_progress=False),
        "seq2seq": lambda lstm, device: seq2seq.train(lstm, max_steps=steps, target=2.0, device=device,
                                                      show_progress=False),
    }


def first_difference(a, b):
    """First step whose logged loss differs bit for bit, or None."""
    for k, (x, y) in enumerate(zip(a, b)):
        if torch.tensor(x, dtype=torch.float64).numpy().tobytes() != \
                torch.tensor(y, dtype=torch.float64).numpy().tobytes():
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(name, a, b):
    diff = first_difference(a["loss"], b["loss"])
    return {"pair": name, "first_differing_step": diff, "hash_a": a["param_hash"][:16],
            "hash_b": b["param_hash"][:16],
            "identical": diff is None and a["param_hash"] == b["param_hash"]}


def with_threads(n, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def report(steps, examples, threads, out_dir):
    runners = example_runners(steps)
    gpu = torch.cuda.is_available()
    results = {"steps": steps, "comparisons": [], "gpu": gpu}
    for name in examples:
        run = runners[name]
        runs = {
            "detlstm run 1": run("detlstm", "cpu"), "detlstm run 2": run("detlstm", "cpu"),
            "nn.LSTM run 1": run("torch", "cpu"), "nn.LSTM run 2": run("torch", "cpu"),
        }
        pairs = [("detlstm: run 1 vs run 2", "detlstm run 1", "detlstm run 2"),
                 ("nn.LSTM (CPU): run 1 vs run 2", "nn.LSTM run 1", "nn.LSTM run 2")]
        if threads:
            runs[f"detlstm {threads} thread(s)"] = with_threads(threads, lambda: run("detlstm", "cpu"))
            runs[f"nn.LSTM {threads} thread(s)"] = with_threads(threads, lambda: run("torch", "cpu"))
            pairs += [(f"detlstm: {torch.get_num_threads()} vs {threads} threads", "detlstm run 1",
                       f"detlstm {threads} thread(s)"),
                      (f"nn.LSTM: {torch.get_num_threads()} vs {threads} threads", "nn.LSTM run 1",
                       f"nn.LSTM {threads} thread(s)")]
        if gpu:
            runs["detlstm GPU"] = run("detlstm", "cuda")
            runs["cuDNN run 1"] = run("torch", "cuda")
            runs["cuDNN run 2"] = run("torch", "cuda")
            pairs += [("detlstm: CPU vs GPU", "detlstm run 1", "detlstm GPU"),
                      ("cuDNN: run 1 vs run 2", "cuDNN run 1", "cuDNN run 2")]
        for label, a, b in pairs:
            results["comparisons"].append({"example": name, **compare(label, runs[a], runs[b])})
        plot_lines(os.path.join(out_dir, f"{name}_loss.png"), {k: v["loss"] for k, v in runs.items()},
                   f"{name}: loss per step, every run overlaid", "step", "loss")
        results[name] = {k: {"loss": v["loss"], "param_hash": v["param_hash"]} for k, v in runs.items()}
    save_json(os.path.join(out_dir, "repro.json"), results)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.repro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--examples", default="tagger,seq2seq")
    p.add_argument("--threads", type=int, default=1,
                   help="also run at this many threads and compare (0: skip)")
    p.add_argument("--out", default=os.path.join("results", "repro"))
    args = p.parse_args(argv)
    results = report(args.steps, args.examples.split(","), args.threads, args.out)
    print(f"{'example':8s}  {'comparison':34s}  {'first differing step':>20s}  {'final parameter hashes':35s}  verdict")
    for c in results["comparisons"]:
        step = "none" if c["first_differing_step"] is None else str(c["first_differing_step"])
        print(f"{c['example']:8s}  {c['pair']:34s}  {step:>20s}  {c['hash_a']} {c['hash_b']}  "
              f"{'IDENTICAL' if c['identical'] else 'DIFFERENT'}")
    print(f"plots and JSON in {args.out}")
    detlstm_ok = all(c["identical"] for c in results["comparisons"] if c["pair"].startswith("detlstm"))
    return 0 if detlstm_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
