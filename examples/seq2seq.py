"""Seq2seq with an LSTM encoder-decoder on a toy translation task (python -m examples.seq2seq --help).

Task: map a random token sequence to the same sequence with every token + 1 (pad/bos/eos ids 0/1/2).
The encoder is a bidirectional LSTM fed the padded, unsorted, variable-length batch with lengths=;
its per-sequence final states h_n/c_n (forward after each sequence's last step, reverse after its
first) initialise a unidirectional decoder, trained with teacher forcing and ignore_index for padding.
Training runs until greedy-decoding token accuracy on held-out data exceeds the target (95%).
"""

import argparse
import os

import torch
from torch import nn

from examples.common import (LSTM_KINDS, device_of, make_lstm, param_hash, plot_lines, progress,
                             run_lstm, save_json)

PAD, BOS, EOS, FIRST = 0, 1, 2, 3


class Seq2Seq(nn.Module):
    def __init__(self, kind, vocab, embed, hidden, layers):
        super().__init__()
        self.layers = layers
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.encoder = make_lstm(kind, embed, hidden, num_layers=layers, bidirectional=True,
                                 batch_first=True)
        self.decoder = make_lstm(kind, embed, 2 * hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(2 * hidden, vocab)

    def encode(self, src, src_len):
        _, (h, c) = run_lstm(self.encoder, self.embed(src), src_len)
        # (layers*2, B, H) -> (layers, B, 2H): each layer's forward and reverse final states side by side
        def merge(s):
            return s.view(self.layers, 2, s.shape[1], s.shape[2]).permute(0, 2, 1, 3).reshape(
                self.layers, s.shape[1], 2 * s.shape[2]).contiguous()
        return merge(h), merge(c)

    def forward(self, src, src_len, dec_in, dec_len):
        state = self.encode(src, src_len)
        out, _ = run_lstm(self.decoder, self.embed(dec_in), dec_len, state)
        return self.out(out)

    @torch.no_grad()
    def greedy(self, src, src_len, max_len):
        h, c = self.encode(src, src_len)
        prev = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
        steps = []
        for _ in range(max_len):
            out, (h, c) = self.decoder(self.embed(prev), (h, c))
            prev = self.out(out).argmax(-1)
            steps.append(prev)
        return torch.cat(steps, 1)


def make_batch(generator, batch, max_len, vocab):
    src_len = torch.randint(3, max_len + 1, (batch,), generator=generator)
    src = torch.randint(FIRST, vocab - 1, (batch, max_len), generator=generator)
    valid = torch.arange(max_len).unsqueeze(0) < src_len.unsqueeze(1)
    src = src * valid
    tgt = torch.zeros(batch, max_len + 1, dtype=torch.long)  # tokens + 1, then EOS, then padding
    tgt[:, :max_len] = (src + 1) * valid
    tgt[torch.arange(batch), src_len] = EOS
    dec_in = torch.cat([torch.full((batch, 1), BOS), tgt[:, :-1]], 1)
    return src, src_len, dec_in, src_len + 1, tgt


def token_accuracy(model, data, max_len, dev):
    src, src_len, _, _, tgt = data
    pred = model.greedy(src.to(dev), src_len, max_len + 1).cpu()
    mask = tgt != PAD
    return (pred[mask] == tgt[mask]).float().mean().item()


def decode(tokens):
    words = []
    for t in tokens.tolist():
        if t == EOS:
            break
        words.append(str(t))
    return " ".join(words)


def train(lstm="detlstm", max_steps=3000, batch=64, max_len=7, vocab=14, embed=32, hidden=64,
          layers=1, lr=0.005, target=0.95, eval_every=50, seed=0, device="cpu", show_progress=True):
    torch.manual_seed(seed)
    dev = device_of(device)
    model = Seq2Seq(lstm, vocab, embed, hidden, layers).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed + 1)
    held_out = make_batch(torch.Generator().manual_seed(seed + 2), 256, max_len, vocab)
    log = {"loss": [], "eval_steps": [], "accuracy": [], "reached_at": None}
    for step in progress(range(1, max_steps + 1), max_steps, f"seq2seq[{lstm}]", show_progress):
        src, src_len, dec_in, dec_len, tgt = make_batch(data, batch, max_len, vocab)
        logits = model(src.to(dev), src_len, dec_in.to(dev), dec_len)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.to(dev).reshape(-1),
                                           ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log["loss"].append(loss.item())
        if step % eval_every == 0:
            model.eval()
            acc = token_accuracy(model, held_out, max_len, dev)
            model.train()
            log["eval_steps"].append(step)
            log["accuracy"].append(acc)
            if acc > target:
                log["reached_at"] = step
                break
    model.eval()
    src, src_len, _, _, tgt = held_out
    pred = model.greedy(src[:5].to(dev), src_len[:5], max_len + 1).cpu()
    log["samples"] = [{"source": decode(src[k][: src_len[k]]), "target": decode(tgt[k]),
                       "decoded": decode(pred[k])} for k in range(5)]
    log["param_hash"] = param_hash(model)
    return log


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m examples.seq2seq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lstm", choices=LSTM_KINDS, default="detlstm")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--target", type=float, default=0.95, help="held-out token accuracy to reach")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=os.path.join("results", "seq2seq"))
    args = p.parse_args(argv)
    log = train(args.lstm, args.max_steps, target=args.target, seed=args.seed, device=args.device)
    save_json(os.path.join(args.out, "log.json"), log)
    plot_lines(os.path.join(args.out, "loss.png"), {"training loss": log["loss"]},
               "seq2seq: training loss", "step", "cross-entropy")
    plot_lines(os.path.join(args.out, "accuracy.png"),
               {"held-out token accuracy": (log["eval_steps"], log["accuracy"])},
               "seq2seq: greedy decoding accuracy", "step", "accuracy")
    if log["reached_at"]:
        print(f"held-out token accuracy {log['accuracy'][-1]:.3f} > {args.target} after "
              f"{log['reached_at']} steps")
    else:
        print(f"did not reach {args.target} in {args.max_steps} steps "
              f"(last accuracy {log['accuracy'][-1] if log['accuracy'] else 0:.3f})")
    for s in log["samples"]:
        print(f"  {s['source']:>20s}  ->  {s['decoded']:<22s} (target {s['target']})")
    return 0 if log["reached_at"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
