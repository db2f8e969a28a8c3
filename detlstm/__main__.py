"""python -m detlstm: the reproducibility demo.

Trains a small bidirectional 2-layer LSTM tagger with dropout for a few steps, twice, from the same
seed, and prints for each run one hash over every loss, output and gradient (they match). Then it
compares detlstm with torch.nn.LSTM on the same weights with dropout off.

python -m detlstm info: versions, CPU kernel build, threads, CUDA kernels and GPUs, and a one-second
self-check against a stored hash (PASS/FAIL): what to paste into a bug report.
"""

import argparse
import hashlib
import sys

import torch
from torch import nn

import detlstm


class Tagger(nn.Module):
    def __init__(self, vocab, classes, hidden, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.lstm = detlstm.LSTM(32, hidden, num_layers=2, bidirectional=True, dropout=dropout,
                                 batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, tokens, lengths):
        out, _ = self.lstm(self.embed(tokens), lengths=lengths)
        return self.head(out)


def make_batch(generator, batch, max_len, vocab):
    lengths = torch.randint(max_len // 4, max_len + 1, (batch,), generator=generator)
    tokens = torch.randint(1, vocab, (batch, max_len), generator=generator)
    tags = (tokens[:, 1:] > tokens[:, :-1]).long()  # is this token larger than the previous one?
    tags = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tags], 1)
    mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
    return tokens * mask, lengths, tags, mask


def train_run(seed, steps, device):
    torch.manual_seed(seed)
    model = Tagger(vocab=50, classes=2, hidden=48, dropout=0.5).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(seed)
    digest = hashlib.sha256()
    losses = []
    for _ in range(steps):
        tokens, lengths, tags, mask = make_batch(data, 16, 30, 50)
        tokens, tags, mask = tokens.to(device), tags.to(device), mask.to(device)
        logits = model(tokens, lengths)
        loss = nn.functional.cross_entropy(logits[mask], tags[mask])
        opt.zero_grad()
        loss.backward()
        for t in [loss, logits] + [p.grad for p in model.parameters()]:
            digest.update(t.detach().cpu().numpy().tobytes())
        opt.step()
        losses.append(loss.item())
    return digest.hexdigest(), losses


def difference_from_nn_lstm(device):
    torch.manual_seed(1)
    ref = nn.LSTM(32, 48, num_layers=2, bidirectional=True).to(device)
    ours = detlstm.convert(nn.LSTM(32, 48, num_layers=2, bidirectional=True)).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(30, 16, 32, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    lengths = torch.randint(8, 31, (16,))
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_ref, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], total_length=30)
    out_ours, _ = ours(x2, lengths=lengths)
    out_ref.square().sum().backward()
    out_ours.square().sum().backward()
    grad_diff = max((a.grad - b.grad).abs().max().item()
                    for a, b in zip(list(ref.parameters()) + [x], list(ours.parameters()) + [x2]))
    return (out_ref - out_ours).abs().max().item(), grad_diff


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["info"]:
        from . import _info
        return _info.main(argv[1:])
    return demo(argv)


def demo(argv):
    parser = argparse.ArgumentParser(prog="python -m detlstm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() and detlstm.HAS_CUDA_KERNELS else "cpu")
    args = parser.parse_args(argv)

    print(f"detlstm {detlstm.__version__} on {args.device}, torch {torch.__version__}")
    print(f"training a 2-layer bidirectional LSTM tagger, dropout 0.5, {args.steps} steps, seed {args.seed}")
    hashes = []
    for run in (1, 2):
        digest, losses = train_run(args.seed, args.steps, args.device)
        hashes.append(digest)
        print(f"  run {run}: loss {losses[0]:.4f} -> {losses[-1]:.4f}   hash {digest[:32]}")
    same = hashes[0] == hashes[1]
    print("  identical bits in both runs (losses, outputs, gradients):", "YES" if same else "NO")
    out_diff, grad_diff = difference_from_nn_lstm(args.device)
    print(f"largest difference from torch.nn.LSTM (dropout off): output {out_diff:.2e}, "
          f"gradients {grad_diff:.2e}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
