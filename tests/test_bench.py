"""The bench's own code runs end to end on tiny shapes, so it cannot rot."""

import json
import os

from bench.__main__ import main, write_results_md


def test_bench_runs_and_writes_every_output(tmp_path):
    out = tmp_path / "out"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Bench results\n\nintro stays\n")
    code = main(["--device", "cpu", "--custom", "6,3,5,8,2,1,0.3,uniform:2", "--shapes", "",
                 "--repeats", "2", "--warmup", "1", "--out", str(out), "--results-md", str(md),
                 "--quick"])
    assert code == 0
    result = json.loads((out / "results_cpu.json").read_text())
    names = {r["competitor"] for r in result["rows"]}
    assert names == {"detlstm", "nn.LSTM", "two-one-way"}
    for r in result["rows"]:
        assert r["ms"] > 0 and r["tokens_per_s"] > 0, r
        if r["mode"] == "forward+backward":
            assert r["peak_mib"] is not None
    assert {r["competitor"] for r in result["variable_length"]} == names
    assert result["batch_sweep"] and result["hidden_sweep"]
    for plot in ("batch_sweep.png", "hidden_sweep.png"):
        assert os.path.getsize(out / plot) > 1000
    text = md.read_text()
    assert "intro stays" in text and "<!-- bench:cpu:start -->" in text and "two-one-way" in text
    # a second write replaces the section instead of appending another
    write_results_md(str(md), "cpu", "replaced")
    assert md.read_text().count("<!-- bench:cpu:start -->") == 1 and "replaced" in md.read_text()


def test_two_one_way_matches_a_bidirectional_lstm_at_one_layer():
    """The workaround is the same model as a 1-layer bidirectional LSTM (and only then)."""
    import torch

    import detlstm
    from bench.competitors import TwoOneWayCompetitor
    from bench.core import SHAPES

    spec = SHAPES["cpu"].__class__("t", 7, 3, 4, 5, 1, True, 0.0, "all")
    comp = TwoOneWayCompetitor()
    torch.manual_seed(0)
    model = comp.build(spec, "cpu", torch.float64)
    bi = detlstm.LSTM(4, 5, bidirectional=True, dtype=torch.float64)
    state = {k: v for k, v in model.fwd.state_dict().items()}
    state.update({k + "_reverse": v for k, v in model.bwd.state_dict().items()})
    bi.load_state_dict(state)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5])
    a = comp.run(model, x, lengths)
    out, (h, c) = bi(x, lengths=lengths)
    torch.testing.assert_close(a[0], out)
    torch.testing.assert_close(a[1], h)
    torch.testing.assert_close(a[2], c)


def test_gpu_profile_script_runs_and_reports_floors(tmp_path, capsys):
    from bench import gpu_profile

    out = tmp_path / "profile.md"
    assert gpu_profile.main(["--device", "cpu", "--shapes", "", "--custom", "6,3,4,5,2,1,0.3,uniform:2",
                             "--calls", "1", "--out", str(out)]) == 0
    report = out.read_text()
    assert "floors (ms): arithmetic" in report and "**detlstm**" in report
    assert "detlstm::lstm_backward" in report  # the operators show up as rows


def test_floors_count_the_work():
    from bench.core import Spec
    from bench.gpu_profile import floors_ms

    spec = Spec("t", 10, 2, 3, 4, 1, False, 0.0, "all")
    fl = floors_ms(spec, tokens=20, flop_rate=1e3, byte_rate=1e3, clock_hz=1e3)
    assert fl["arithmetic"] == 1e3 * 3 * 2 * 20 * 16 * (3 + 4) / 1e3
    assert fl["latency"] == 1e3 * 10 * (4 + 16) * 4 / 1e3
