"""The bench's own code runs end to end on tiny shapes, so it cannot rot."""

import json
import os

import pytest

from bench.__main__ import main, write_results_md


def test_bench_runs_and_writes_every_output(tmp_path):
    out = tmp_path / "out"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Bench results\n\nintro stays\n")
    code = main(["--device", "cpu", "--custom", "6,3,5,8,2,1,0.3,uniform:2", "--shapes", "",
                 "--repeats", "2", "--warmup", "1", "--out", str(out), "--results-md", str(md),
                 "--quick", "--threads", "1"])
    assert code == 0
    result = json.loads((out / "results_cpu.json").read_text())
    names = {r["competitor"] for r in result["rows"]}
    assert names == {"detlstm", "nn.LSTM", "two-one-way"}
    for r in result["rows"]:
        assert r["ms"] > 0 and r["tokens_per_s"] > 0, r
        assert r["peak_mib"] is not None, r  # forward rows too: the inference peak
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


def test_gpu_memory_replays_the_trace_to_its_peak():
    from bench.gpu_memory import by_label, frame_label, live_at_peak

    events = [("alloc", 1, 100, "weights"), ("alloc", 2, 50, "scratch"), ("free_requested", 2, 50, ""),
              ("alloc", 3, 30, "scratch"),  # 2 is still live until its free completes: 180
              ("free_completed", 2, 50, ""), ("alloc", 4, 60, "grads"),  # 190, the peak
              ("free_completed", 4, 60, ""), ("alloc", 5, 20, "late"), ("free_completed", 7, 9, "")]
    peak, blocks = live_at_peak(events)
    assert peak == 190 and sorted(blocks) == [1, 3, 4]
    assert by_label(blocks) == [("weights", 100, 1), ("grads", 60, 1), ("scratch", 30, 1)]
    same = {1: (50, "op"), 2: (50, "op"), 3: (70, "op"), 4: (80, "other")}
    assert by_label(same) == [("op", 50, 2), ("other", 80, 1), ("op", 70, 1)]
    frames = [{"name": "at::empty", "filename": "/x/torch/a.cpp", "line": 3},
              {"name": "detlstm::cuda::backward_scratch<float>", "filename": "/y/backward.cu", "line": 9},
              {"name": "step", "filename": "/r/bench/core.py", "line": 117}]
    assert frame_label(frames) == "detlstm::cuda::backward_scratch<float> (backward.cu:9)"
    assert frame_label(frames[2:]) == "step (core.py:117)"
    in_venv = [{"name": "empty", "filename": "/w/detlstm/.venv/lib/torch/x.py", "line": 1}] + frames[2:]
    assert frame_label(in_venv) == "step (core.py:117)"
    assert frame_label([]) == "(no frames)"


def test_gpu_memory_says_it_needs_a_gpu(monkeypatch):
    import torch

    from bench import gpu_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_memory.main(["--shapes", "large"])


TINY = "6,3,5,8,2,1,0.3,uniform:2"


def test_custom_names_encode_every_field_and_stay_unique():
    from bench.core import parse_custom, unique_specs

    texts = ["50,16,128,128,2,1,0.3,uniform:10", "50,16,128,128,2,1,0.3,all",
             "50,16,128,128,2,0,0.3,all", "50,16,128,128,2,1,0,all", "50,16,128,128,2,1,0.3,uniform:20"]
    specs = [parse_custom(t) for t in texts]
    assert specs[0].name == "custom-50x16x128x128x2-bi-p0.3-uniform10"
    assert specs[2].name == "custom-50x16x128x128x2-uni-p0.3-all"
    assert specs[3].name == "custom-50x16x128x128x2-bi-p0-all"
    assert len({s.name for s in specs}) == len(specs)
    # the same shape given twice is measured once
    assert unique_specs(specs + [parse_custom(texts[1])]) == specs


def test_reference_shapes_from_design():
    from bench.__main__ import DEFAULT_SHAPES
    from bench.core import SHAPES, Spec

    assert SHAPES["dense"] == Spec("dense", 50, 16, 128, 128, 2, True, 0.3, "all")
    assert SHAPES["fastrnns"] == Spec("fastrnns", 100, 64, 512, 512, 1, False, 0.0, "all")
    assert DEFAULT_SHAPES["cpu"] == "cpu,dense,fastrnns,tagger"
    assert all(n in SHAPES for v in DEFAULT_SHAPES.values() for n in v.split(","))


def test_full_length_inputs_run_dense_and_others_packed():
    """Each row records the form the competitor got, and for nn.LSTM the path it took."""
    import torch

    from bench.__main__ import measure
    from bench.competitors import all_competitors
    from bench.core import parse_custom

    dense, ragged = parse_custom("6,3,5,8,2,1,0.3,all"), parse_custom("6,3,5,8,2,1,0.3,uniform:2")
    expected = {"detlstm": "lengths", "nn.LSTM": "packed", "two-one-way": "packed"}
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    for mode in ("forward", "forward+backward"):
        for c in all_competitors("cpu"):
            a = measure(c, dense, "cpu", torch.float32, mode, warmup=0, repeats=1)
            b = measure(c, ragged, "cpu", torch.float32, mode, warmup=0, repeats=1)
            assert a["input"] == "dense" and b["input"] == expected[c.name], (c.name, a, b)
            if c.name == "detlstm":
                assert a["path"] == b["path"] == f"detlstm {__import__('detlstm').set_cpu_variant('')}"
            else:
                assert a["path"] in ("oneDNN", "ATen") and b["path"] == "ATen", (c.name, mode, a, b)
                if onednn:  # nn.LSTM takes oneDNN's fused LSTM for dense float32 input
                    assert a["path"] == "oneDNN", (c.name, mode, a)


def test_detlstm_dense_form_matches_lengths_form():
    """The dense call (no lengths) is the same computation as lengths all T."""
    import torch

    from bench.competitors import DetLSTM
    from bench.core import make_inputs, parse_custom, user_form

    spec = parse_custom("5,2,3,4,1,1,0,all")
    comp = DetLSTM()
    model = comp.build(spec, "cpu", torch.float64)
    (x, lengths), = make_inputs(spec, "cpu", torch.float64, 1)
    (xd, none), = user_form([(x, lengths)])
    assert none is None
    for a, b in zip(comp.run(model, xd, None), comp.run(model, x, lengths)):
        assert torch.equal(a, b)


def test_thread_sweep_rows_and_ratios_per_thread_count(tmp_path):
    import torch

    from bench.__main__ import add_ratios

    before = torch.get_num_threads()
    out = tmp_path / "out"
    assert main(["--device", "cpu", "--custom", TINY, "--shapes", "", "--modes", "forward",
                 "--competitors", "detlstm,nn.LSTM", "--threads", "1,2", "--repeats", "1", "--warmup", "0",
                 "--out", str(out), "--no-studies", "--no-plots"]) == 0
    assert torch.get_num_threads() == before
    result = json.loads((out / "results_cpu.json").read_text())
    assert result["threads"] == [1, 2]
    rows = result["rows"]
    assert sorted((r["threads"], r["competitor"]) for r in rows) == \
        [(1, "detlstm"), (1, "nn.LSTM"), (2, "detlstm"), (2, "nn.LSTM")]
    det = {r["threads"]: r for r in rows if r["competitor"] == "detlstm"}
    for r in rows:
        assert r["vs_detlstm"] == r["tokens_per_s"] / det[r["threads"]]["tokens_per_s"]
    report = (out / "report_cpu.md").read_text()
    assert "| threads |" in report and "| path |" in report and "| input |" in report

    # ratios never mix thread counts (or shapes that differ only in their lengths)
    def row(shape, threads, name, tps):
        return {"shape": shape, "mode": "forward", "dtype": "float32", "threads": threads,
                "competitor": name, "ms": 1.0, "tokens_per_s": tps}
    rows = [row("a", 1, "detlstm", 10.0), row("a", 2, "detlstm", 40.0), row("a", 1, "nn.LSTM", 20.0),
            row("a", 2, "nn.LSTM", 20.0), row("b", 1, "nn.LSTM", 5.0)]
    add_ratios(rows)
    assert [r.get("vs_detlstm") for r in rows] == [1.0, 1.0, 2.0, 0.5, None]


def test_batch_sweep_alone_times_each_mode_at_the_sizes_asked(tmp_path):
    """Issue 13's small-batch target is read off the batch sweep, forward and forward + backward: the
    GPU session runs that study alone, at the sizes it names."""
    out = tmp_path / "out"
    assert main(["--device", "cpu", "--custom", TINY, "--shapes", "", "--competitors",
                 "detlstm,nn.LSTM", "--threads", "1", "--repeats", "1", "--warmup", "0",
                 "--out", str(out), "--studies", "batch", "--batch-sweep", "1,3,1", "--no-plots"]) == 0
    result = json.loads((out / "results_cpu.json").read_text())
    assert "hidden_sweep" not in result and "variable_length" not in result
    rows = result["batch_sweep"]
    assert sorted((r["B"], r["mode"], r["competitor"]) for r in rows) == sorted(
        (b, m, c) for b in (1, 3) for m in ("forward", "forward+backward") for c in ("detlstm", "nn.LSTM"))
    for r in rows:
        det = next(d for d in rows if d["competitor"] == "detlstm" and (d["B"], d["mode"]) == (r["B"], r["mode"]))
        assert r["vs_detlstm"] == r["tokens_per_s"] / det["tokens_per_s"]
    report = (out / "report_cpu.md").read_text()
    for mode in ("forward", "forward+backward"):
        assert f"**Sweep over B** ({mode}; tokens/s, and vs detlstm)" in report
    nn_row = [line for line in report.splitlines() if line.startswith("| nn.LSTM |") and "x) |" in line]
    assert len(nn_row) == 2 and all(line.count("x)") == 2 for line in nn_row)


@pytest.mark.parametrize("argv, message", [
    (["--studies", "batch,speed"], "--studies: unknown speed"),
    (["--batch-sweep", "4,0"], "--batch-sweep wants positive batch sizes"),
    (["--batch-sweep", "four"], "--batch-sweep wants positive batch sizes"),
])
def test_bad_study_arguments_name_the_argument(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["--device", "cpu", "--custom", TINY, "--shapes", "", "--out", str(tmp_path)] + argv)


@pytest.fixture(scope="module")
def fma_build_dir(tmp_path_factory):
    """One build of bench/fma_peak.cpp for the tests here (about 2 s)."""
    from bench import phases

    if not phases.peak_widths():
        pytest.skip("no AVX2/FMA on this CPU")
    d = str(tmp_path_factory.mktemp("fma_peak_build"))
    try:
        phases.fma_peak_library(d)
    except RuntimeError as err:
        pytest.skip(str(err))
    return d


def test_phases_on_a_tiny_shape(fma_build_dir):
    import torch

    from bench import phases
    from bench.core import parse_custom

    before = torch.get_num_threads()
    result = phases.run([parse_custom(TINY)], [1], repeats=2, warmup=1, build_dir=fma_build_dir)
    assert torch.get_num_threads() == before
    assert result["peak_error"] is None and result["peaks"][1]["peak"] > 1.0, result["peaks"]
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"forward", "forward+backward"}
    working = {"forward": ("input_projection", "recurrence"),
               "forward+backward": ("input_projection", "recurrence", "recurrence_backward",
                                    "initial_state_gradients", "input_gradient", "weight_gradients")}
    for mode, r in rows.items():
        assert r["call_ms"] > 0 and r["input"] == "lengths"
        for name in working[mode]:
            p = r["phases"][name]
            assert p["ms"] > 0 and p["multiply_adds"] > 0 and p["gflops"] > 0 and p["pct_peak"] > 0, \
                (mode, name, p)
    assert rows["forward"]["phases"]["recurrence_backward"]["ms"] == 0
    assert rows["forward+backward"]["phases"]["bias_gradients"]["ms"] > 0
    # the clock is off again: a call now adds nothing
    import detlstm
    from detlstm import _ops

    _ops.take_cpu_phase_times()
    detlstm.LSTM(5, 8)(torch.randn(3, 2, 5))
    assert all(s == 0 for s, _ in _ops.take_cpu_phase_times().values())


def test_phases_writes_its_section(fma_build_dir, tmp_path, capsys):
    from bench import phases

    md = tmp_path / "RESULTS.md"
    md.write_text("# Bench results\n\nintro stays\n\n<!-- bench:cpu:start -->\nbench\n<!-- bench:cpu:end -->\n")
    args = ["--shapes", "", "--custom", "4,2,3,4,1,0,0,all", "--threads", "1", "--repeats", "1",
            "--warmup", "0", "--build-dir", fma_build_dir, "--results-md", str(md)]
    assert phases.main(args) == 0
    assert phases.main(args) == 0
    text = md.read_text()
    assert text.count("<!-- phases:cpu:start -->") == 1 and text.count("<!-- phases:cpu:end -->") == 1
    assert "intro stays" in text and "<!-- bench:cpu:start -->" in text
    section = text.split("<!-- phases:cpu:start -->")[1]
    assert "detlstm CPU variant" in section and "**whole call**" in section and "FMA peak" in section
    assert "custom-4x2x3x4x1-uni-p0-all" in section


def test_cpu_memory_probe_gives_no_number_where_the_peak_cannot_be_reset(monkeypatch):
    """The probe's peak is a call's only if the process's recorded peak was reset before it: where
    Linux refuses that (no /proc/self/clear_refs), the probe reports nothing rather than a peak that
    includes building the model."""
    import builtins

    from bench import core

    if not core._reset_peak_rss():
        pytest.skip("this host refuses /proc/self/clear_refs already: nothing to compare with")
    spec = core.parse_custom("4,2,3,5,1,0,0,all")
    # threads None: the probe leaves this process's thread count alone
    assert core._memory_probe("detlstm", core.dataclasses.asdict(spec), "float32", None, "forward") >= 0
    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert core._reset_peak_rss() is False
    assert core._memory_probe("detlstm", core.dataclasses.asdict(spec), "float32", None, "forward") is None
