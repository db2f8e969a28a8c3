"""The reproducibility workload (tests/test_reproducibility.py runs it in-process and, as a script, in
fresh processes): one training-mode forward + backward of a 3-layer bidirectional LSTM with dropout
0.5 and uneven lengths. As a script it prints the SHA-256 of every result's bytes."""

import sys

import torch

import detlstm
from helpers import digest, forward_backward

LENGTHS = (13, 4, 9, 1, 13, 7)


def workload(dropout_seed=None):
    """[output, h_n, c_n, grad x, grad h0, grad c0, *grad weights]; everything, the dropout seed
    included (unless given), drawn after torch.manual_seed(2026)."""
    torch.manual_seed(2026)
    model = detlstm.LSTM(11, 24, num_layers=3, bidirectional=True, dropout=0.5)
    model.train()
    x = torch.randn(13, 6, 11)
    hx = (torch.randn(6, 6, 24), torch.randn(6, 6, 24))
    results = forward_backward(model, "lengths", x, hx, LENGTHS, loss_seed=123, dropout_seed=dropout_seed)
    assert len(results) == 3 + 3 + 24  # out, h_n, c_n; x, h0, c0 and every weight
    return results


def workload_digest():
    return digest(workload())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        torch.set_num_threads(int(sys.argv[1]))
    print(workload_digest())
