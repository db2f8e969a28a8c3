"""BiLSTM sequence tagger on padded variable-length batches (python -m examples.tagger --help).

Task (synthetic, learnable, generated from a fixed seed): tag each digit of a random digit sequence
with whether it is larger than the previous digit. Model: embedding -> 2-layer bidirectional LSTM with
dropout 0.5, fed the padded batch and its lengths (no sorting, no packing by hand) -> linear ->
log-softmax over the labels; the loss is masked to the valid steps. Gradients are clipped by norm,
and every step logs the gradient L2 norm of each LSTM parameter group (weight_ih, weight_hh, bias).
With --embeddings, the embedding matrix is loaded from a .npy or .pt file and frozen.
"""

import argparse
import os

import numpy as np
import torch
from torch import nn

from examples.common import (LSTM_KINDS, device_of, make_lstm, param_hash, plot_lines, progress,
                             run_lstm, save_json)

VOCAB = 11  # 0 = padding, 1..10 = digits 0..9
EMBED = 16


class Tagger(nn.Module):
    def __init__(self, kind, hidden, embeddings=None):
        super().__init__()
        if embeddings is None:
            self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        else:
            self.embed = nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        self.lstm = make_lstm(kind, self.embed.embedding_dim, hidden, num_layers=2,
                              bidirectional=True, dropout=0.5, batch_first=True)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, tokens, lengths):
        out, _ = run_lstm(self.lstm, self.embed(tokens), lengths)
        return torch.log_softmax(self.head(out), dim=-1)


def make_batch(generator, batch, max_len):
    lengths = torch.randint(max(2, max_len // 4), max_len + 1, (batch,), generator=generator)
    digits = torch.randint(0, 10, (batch, max_len), generator=generator)
    tags = torch.zeros(batch, max_len, dtype=torch.long)
    tags[:, 1:] = (digits[:, 1:] > digits[:, :-1]).long()
    mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
    tokens = (digits + 1) * mask
    return tokens, lengths, tags, mask


def write_embeddings(path, seed=0):
    """A tiny 'pretrained' embedding file: one random unit vector per digit, the padding row zero."""
    g = np.random.default_rng(seed)
    matrix = g.standard_normal((VOCAB, EMBED)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix[0] = 0
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".pt"):
        torch.save(torch.from_numpy(matrix), path)
    else:
        np.save(path, matrix)
    return path


def load_embeddings(path):
    if path.endswith(".npy"):
        matrix = torch.from_numpy(np.load(path))
    elif path.endswith(".pt"):
        matrix = torch.load(path)
    else:
        raise SystemExit(f"--embeddings must be a .npy or .pt file, got {path}")
    if matrix.dim() != 2 or matrix.shape[0] != VOCAB:
        raise SystemExit(f"--embeddings must hold a ({VOCAB}, dim) matrix, got {tuple(matrix.shape)}")
    return matrix.float()


def grad_norms(lstm):
    groups = {"weight_ih": [], "weight_hh": [], "bias": []}
    for name, p in lstm.named_parameters():
        key = "bias" if name.startswith("bias") else name.split("_l")[0]
        if p.grad is not None:
            groups[key].append(p.grad.detach().double().pow(2).sum())
    return {k: float(torch.stack(v).sum().sqrt()) if v else 0.0 for k, v in groups.items()}


def train(lstm="detlstm", steps=150, batch=32, max_len=24, hidden=32, lr=0.01, clip=1.0, seed=0,
          device="cpu", embeddings=None, show_progress=True):
    torch.manual_seed(seed)
    dev = device_of(device)
    model = Tagger(lstm, hidden, load_embeddings(embeddings) if embeddings else None).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    data = torch.Generator().manual_seed(seed + 1)
    log = {"loss": [], "accuracy": [], "grad_norm": {"weight_ih": [], "weight_hh": [], "bias": []}}
    for _ in progress(range(steps), steps, f"tagger[{lstm}]", show_progress):
        tokens, lengths, tags, mask = make_batch(data, batch, max_len)
        tokens, tags, mask = tokens.to(dev), tags.to(dev), mask.to(dev)
        logp = model(tokens, lengths)
        loss = nn.functional.nll_loss(logp[mask], tags[mask])
        opt.zero_grad()
        loss.backward()
        for k, v in grad_norms(model.lstm).items():
            log["grad_norm"][k].append(v)
        nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        log["loss"].append(loss.item())
        log["accuracy"].append((logp.argmax(-1)[mask] == tags[mask]).float().mean().item())
    log["param_hash"] = param_hash(model)
    log["frozen_embeddings"] = bool(embeddings)
    return log


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.tagger", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lstm", choices=LSTM_KINDS, default="detlstm")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--embeddings", nargs="?", const="auto", default=None,
                   help="load a frozen embedding matrix from a .npy/.pt file; without a path, one is "
                        "generated into the results folder first")
    p.add_argument("--out", default=os.path.join("results", "tagger"))
    args = p.parse_args(argv)
    emb = args.embeddings
    if emb == "auto":
        emb = write_embeddings(os.path.join(args.out, "embeddings.npy"))
    log = train(args.lstm, args.steps, args.batch, hidden=args.hidden, seed=args.seed,
                device=args.device, embeddings=emb)
    save_json(os.path.join(args.out, "log.json"), log)
    plot_lines(os.path.join(args.out, "loss.png"), {"loss": log["loss"]}, "tagger: training loss",
               "step", "masked NLL")
    plot_lines(os.path.join(args.out, "grad_norms.png"), log["grad_norm"],
               "tagger: gradient L2 norm per LSTM parameter group (before clipping)", "step", "L2 norm",
               logy=True)
    print(f"final loss {log['loss'][-1]:.4f}, accuracy {log['accuracy'][-1]:.3f}, "
          f"parameters {log['param_hash'][:16]}, results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
