"""Each example runs a few steps; the repro report's verdicts are computed from the runs."""

import os

import numpy as np
import pytest
import torch

from examples import repro, seq2seq, tagger


def test_tagger_runs_and_logs_gradient_norms():
    log = tagger.train("detlstm", steps=3, batch=8, show_progress=False)
    assert len(log["loss"]) == 3 and all(np.isfinite(log["loss"]))
    for group in ("weight_ih", "weight_hh", "bias"):
        assert len(log["grad_norm"][group]) == 3 and all(v > 0 for v in log["grad_norm"][group])


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_tagger_frozen_pretrained_embeddings(tmp_path, suffix):
    path = tagger.write_embeddings(str(tmp_path / f"emb{suffix}"))
    matrix = tagger.load_embeddings(path)
    torch.manual_seed(0)
    model = tagger.Tagger("detlstm", 8, matrix)
    assert not model.embed.weight.requires_grad
    log = tagger.train("detlstm", steps=2, batch=4, embeddings=path, show_progress=False)
    assert log["frozen_embeddings"]


def test_tagger_cli(tmp_path):
    assert tagger.main(["--steps", "2", "--batch", "4", "--embeddings", "--out", str(tmp_path)]) == 0
    assert os.path.exists(tmp_path / "log.json") and os.path.exists(tmp_path / "embeddings.npy")
    assert os.path.getsize(tmp_path / "grad_norms.png") > 1000


def test_seq2seq_runs_and_decodes():
    log = seq2seq.train("detlstm", max_steps=4, eval_every=2, target=2.0, show_progress=False)
    assert len(log["loss"]) == 4 and log["eval_steps"] == [2, 4] and log["reached_at"] is None
    assert len(log["samples"]) == 5 and all("decoded" in s for s in log["samples"])


def test_seq2seq_batches_are_consistent():
    src, src_len, dec_in, dec_len, tgt = seq2seq.make_batch(torch.Generator().manual_seed(0), 6, 7, 14)
    for b in range(6):
        n = int(src_len[b])
        assert torch.equal(tgt[b, :n], src[b, :n] + 1) and tgt[b, n] == seq2seq.EOS
        assert dec_in[b, 0] == seq2seq.BOS and torch.equal(dec_in[b, 1:n + 1], tgt[b, :n])
        assert int(dec_len[b]) == n + 1 and torch.all(src[b, n:] == seq2seq.PAD)


def test_first_difference_is_computed():
    assert repro.first_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) is None
    assert repro.first_difference([1.0, 2.0, 3.0], [1.0, 2.0 + 1e-15, 3.0]) == 1
    assert repro.first_difference([1.0, 2.0], [1.0, 2.0, 3.0]) == 2


def test_repro_report_verdicts(tmp_path):
    results = repro.report(3, ["tagger"], 1, str(tmp_path))
    by_pair = {c["pair"]: c for c in results["comparisons"]}
    assert by_pair["detlstm: run 1 vs run 2"]["identical"]
    assert by_pair["detlstm: run 1 vs run 2"]["first_differing_step"] is None
    threads = [c for c in results["comparisons"] if c["pair"].startswith("detlstm:") and "threads" in c["pair"]]
    assert threads and threads[0]["identical"]
    assert os.path.getsize(tmp_path / "tagger_loss.png") > 1000
