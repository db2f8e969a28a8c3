"""Run as a script by test_reproducibility.py: one training-mode forward + backward of a 3-layer
bidirectional LSTM with dropout 0.5 and uneven lengths; prints the SHA-256 of every result's bytes."""

import sys

import torch

import detlstm
from helpers import digest, run_with_grads


def workload():
    torch.manual_seed(2026)
    model = detlstm.LSTM(11, 24, num_layers=3, bidirectional=True, dropout=0.5)
    model.train()
    x = torch.randn(13, 6, 11, requires_grad=True)
    h0 = torch.randn(6, 6, 24, requires_grad=True)
    c0 = torch.randn(6, 6, 24, requires_grad=True)
    lengths = torch.tensor([13, 4, 9, 1, 13, 7])
    out, h, c, grads = run_with_grads(model, (x, (h0, c0)), lengths=lengths)
    assert len(grads) == 3 + 24  # x, h0, c0 and every weight
    return [out, h, c] + grads


def workload_digest():
    return digest(workload())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    print(workload_digest())
