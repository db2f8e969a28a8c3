"""python -m detlstm info (detlstm/_info.py): the report's fields, the self-check's stored hash (the
same at 1 and 2 threads and under every CPU kernel build), its FAIL path, and the reading of the GPU
architectures a CUDA library carries."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import detlstm
from detlstm import _build_config, _info, _library, _ops
from detlstm.__main__ import main as detlstm_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("detlstm:", "torch:", "extension:", "python:", "CPU:", "CPU kernels:", "threads:", "flush-to-zero:",
          "torch GPU archs:", "CUDA kernels:", "self-check:")


def _run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_info_prints_every_field_and_the_self_check_passes():
    run = _run("-m", "detlstm", "info")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for field in FIELDS:
        assert any(line.startswith(field) for line in lines), f"no {field!r} line in:\n{run.stdout}"
    assert detlstm.__version__ in run.stdout and torch.__version__ in run.stdout
    assert f"'{detlstm.set_cpu_variant('')}' in use" in run.stdout
    check = next(line for line in lines if line.startswith("self-check:"))
    assert "PASS" in check and "one hash" in check
    assert f"hash {_info.SELF_CHECK_SHA256}" in run.stdout


def test_stored_hash_at_one_and_two_threads_under_every_cpu_build():
    current, _, variants = _info.cpu_variants()
    threads = torch.get_num_threads()
    seen = {}
    try:
        for variant in ("generic", "avx2", "avx512"):
            if variant not in variants:
                continue  # a processor without AVX-512 (or AVX2+FMA) runs fewer builds
            detlstm.set_cpu_variant(variant)
            for n in (1, 2):
                torch.set_num_threads(n)
                seen[(variant, n)] = _info.self_check_digest()
    finally:
        detlstm.set_cpu_variant(current)
        torch.set_num_threads(threads)
    assert seen and all(d == _info.SELF_CHECK_SHA256 for d in seen.values()), seen


def test_a_wrong_stored_hash_fails_with_a_nonzero_exit_status():
    wrong = "0" * 64
    run = _run("-c", "import detlstm._info as i, detlstm.__main__ as m; "
                     f"i.SELF_CHECK_SHA256 = '{wrong}'; raise SystemExit(m.main(['info']))")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "self-check:      FAIL" in run.stdout
    assert f"expected {wrong}" in run.stdout


def test_the_case_changes_its_hash_when_a_result_changes(monkeypatch):
    monkeypatch.setattr(_info, "_DROPOUT_SEED", _info._DROPOUT_SEED + 1)  # other masks
    passed, digests = _info.self_check()
    assert not passed and _info.SELF_CHECK_SHA256 not in digests.values()


def test_the_case_runs_dropout_padding_and_every_gradient():
    out, h_n, c_n, grad_x, *rest = _info.self_check_results()
    lengths = torch.tensor(_info._LENGTHS)
    assert out.shape == (_info._T, _info._B, 2 * _info._H) and len(rest) == 2 + 16
    padding = torch.arange(_info._T).unsqueeze(1) >= lengths.unsqueeze(0)
    assert torch.all(out[padding] == 0) and torch.all(out[~padding].abs().sum(-1) > 0)
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in rest)
    assert torch.all(grad_x[padding] == 0)


def test_flush_to_zero_is_reported_and_the_self_check_still_passes():
    assert _info._flush_to_zero() == "off"
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        assert _info._flush_to_zero().startswith("on")
        assert _info.self_check()[0]
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU build of torch has no GPU code to read")
def test_fatbin_architectures_reads_torch_own_gpu_code():
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cuda.so")
    if not os.path.isfile(library):
        pytest.skip("no libtorch_cuda.so beside torch")
    found = _info.fatbin_architectures(library)
    assert set(torch.cuda.get_arch_list()) <= set(found), found
    assert _info.fatbin_architectures(os.path.join(os.path.dirname(torch.__file__), "lib",
                                                   "libc10.so")) is None  # no GPU code in it


@pytest.mark.skipif(not detlstm.HAS_CUDA_KERNELS, reason="built without the CUDA kernels")
def test_fatbin_architectures_of_our_cuda_kernels():
    found = _info.fatbin_architectures(_info._extension_path("_C_cuda"))
    assert found and all(a.startswith("sm_") for a in found), found  # setup.py: code=sm_XY only


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_fatbin_architectures_tells_ptx_from_machine_code(tmp_path):
    source = tmp_path / "k.cu"
    source.write_text("__global__ void k(float* x) { x[threadIdx.x] += 1.0f; }\n"
                      "void launch(float* x) { k<<<1, 32>>>(x); }\n")
    library = tmp_path / "libk.so"
    subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", "-o", str(library), str(source),
                    "-gencode", "arch=compute_80,code=compute_80",
                    "-gencode", "arch=compute_86,code=sm_86"], check=True, timeout=300)
    assert _info.fatbin_architectures(str(library)) == ["compute_80", "sm_86"]


def test_the_torch_of_the_build_is_read_from_the_build_record(tmp_path, monkeypatch):
    class Extension:
        __file__ = str(tmp_path / "_C.so")

    monkeypatch.setattr(_ops, "_C", Extension)
    monkeypatch.setattr(_library, "_RECORD", None, raising=False)  # the loader's copy: none
    monkeypatch.setattr(_library, "BUILT", "ahead of time", raising=False)
    monkeypatch.setattr(_build_config, "BUILD_RECORD", "record.json", raising=False)
    assert "built against: not recorded by this build" in _info.version_lines()[1]
    (tmp_path / "record.json").write_text(json.dumps({"torch": "9.8.7", "torch_cuda": "12.6"}))
    assert _info.version_lines()[1].endswith("built against: 9.8.7 (CUDA 12.6)")
    assert _info.version_lines()[2] == f"extension:       {tmp_path / '_C.so'} (compiled ahead of time)"
    monkeypatch.setattr(_library, "_RECORD", {"torch": "1.2.3"}, raising=False)  # the loader's copy
    assert _info.version_lines()[1].endswith("built against: 1.2.3")


def test_runs_on():
    assert _info.runs_on(["sm_80", "sm_90"], (8, 6))  # same major, newer minor
    assert _info.runs_on(["sm_80", "sm_90"], (9, 0))
    assert not _info.runs_on(["sm_80", "sm_90"], (10, 0))  # machine code does not cross majors
    assert not _info.runs_on(["sm_86"], (8, 0))
    assert _info.runs_on(["compute_80"], (12, 0))  # PTX compiles for newer GPUs
    assert not _info.runs_on(["compute_90"], (8, 9))


def test_gpu_lines_name_each_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(8, 6), (10, 0)][i])
    monkeypatch.setattr(_ops, "HAS_CUDA_KERNELS", True)
    monkeypatch.setattr(_info, "_extension_path", lambda which: "/somewhere/_C_cuda.so")
    monkeypatch.setattr(_info, "fatbin_architectures", lambda path: ["sm_80", "sm_90"])
    lines = _info.cuda_lines()
    assert "CUDA kernels:    built, for sm_80 sm_90 (/somewhere/_C_cuda.so)" in lines
    assert "GPU 0:           Fake GPU 0, sm_86: detlstm has code for it" in lines
    assert any(line.startswith("GPU 1:           Fake GPU 1, sm_100: NO detlstm code") for line in lines)


def test_no_argument_still_runs_the_demo(capsys):
    assert detlstm_main(["--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "identical bits in both runs (losses, outputs, gradients): YES" in out
