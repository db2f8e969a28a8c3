"""Is cuDNN's nn.LSTM reproducible? Runs a bidirectional 2-layer nn.LSTM with dropout 0.5 (training
mode, forward + backward, a PackedSequence of uneven lengths) in two fresh processes with the same
seed, with and without torch.use_deterministic_algorithms(True) + CUBLAS_WORKSPACE_CONFIG=:4096:8,
and says whether the bits (outputs, states, every gradient) matched: between the processes, and
between two calls in one process. Each process also checks batch invariance (eval mode, no dropout):
does each sequence run alone give the bits it gets inside the batch? Prints one JSON object; part of
detlstm's case."""

import json
import os
import subprocess
import sys

WORKER = r"""
import hashlib, json, os, sys, torch
if os.environ.get("DETLSTM_DET") == "1":
    torch.use_deterministic_algorithms(True)
torch.manual_seed(0)
m = torch.nn.LSTM(256, 256, num_layers=2, bidirectional=True, dropout=0.5).cuda()
x0 = torch.randn(100, 64, 256, device="cuda")
lengths = torch.randint(25, 101, (64,))

def digest():
    torch.manual_seed(1)
    m.train()
    for p in m.parameters():
        p.grad = None
    x = x0.clone().requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h, c) = m(packed)
    (out.data.square().sum() + h.sum() + c.sum()).backward()
    d = hashlib.sha256()
    for t in [out.data, h, c, x.grad] + [p.grad for p in m.parameters()]:
        d.update(t.detach().cpu().numpy().tobytes())
    return d.hexdigest()

def batch_invariant(rows=8):
    m.eval()
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x0, lengths, enforce_sorted=False)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(m(packed)[0])
        differing = 0
        for b in range(rows):
            n = int(lengths[b])
            alone, _ = m(x0[:n, b:b + 1])
            differing += int(not torch.equal(alone[:, 0], out[:n, b]))
    return differing

try:
    first, second = digest(), digest()
    result = {"digest": first, "same_in_process": first == second,
              "rows_differing_alone_of_8": batch_invariant()}
except RuntimeError as err:
    result = {"error": str(err).splitlines()[0]}
print(json.dumps(result))
"""


def run(settings):
    env = dict(os.environ)
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    env.update(settings)
    outs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, env=env,
                           timeout=300)
        try:
            outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            outs.append({"error": (p.stderr.strip().splitlines() or ["no output"])[-1]})
    ok = all("digest" in o for o in outs)
    return {"settings": settings, "processes": outs,
            "identical": ok and outs[0]["digest"] == outs[1]["digest"],
            "same_in_process": ok and all(o["same_in_process"] for o in outs),
            "batch_invariant": ok and all(o["rows_differing_alone_of_8"] == 0 for o in outs)}


def main():
    import torch

    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "default": run({}),
        "deterministic": run({"DETLSTM_DET": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
