"""Is cuDNN's nn.LSTM reproducible? Runs a bidirectional 2-layer nn.LSTM with dropout 0.5 (training
mode, forward + backward) in two fresh processes with the same seed, with and without
torch.use_deterministic_algorithms(True) + CUBLAS_WORKSPACE_CONFIG=:4096:8, and says whether the
bits (outputs, states, every gradient) matched. Prints one JSON object; part of detlstm's case."""

import hashlib
import json
import os
import subprocess
import sys

WORKER = r"""
import hashlib, os, sys, torch
if os.environ.get("DETLSTM_DET") == "1":
    torch.use_deterministic_algorithms(True)
torch.manual_seed(0)
m = torch.nn.LSTM(256, 256, num_layers=2, bidirectional=True, dropout=0.5).cuda().train()
x = torch.randn(100, 64, 256, device="cuda", requires_grad=True)
lengths = torch.randint(25, 101, (64,))
packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
try:
    out, (h, c) = m(packed)
    (out.data.square().sum() + h.sum() + c.sum()).backward()
except RuntimeError as err:
    print("ERROR " + str(err).splitlines()[0]); sys.exit(0)
d = hashlib.sha256()
for t in [out.data, h, c, x.grad] + [p.grad for p in m.parameters()]:
    d.update(t.detach().cpu().numpy().tobytes())
print(d.hexdigest())
"""


def run(settings):
    env = dict(os.environ)
    env.pop("CUBLAS_WORKSPACE_CONFIG", None)
    env.update(settings)
    outs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, env=env,
                           timeout=300)
        outs.append(p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip()
                    else "ERROR " + p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "ERROR")
    return {"settings": settings, "digests": outs,
            "identical": outs[0] == outs[1] and not outs[0].startswith("ERROR")}


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
