"""The build compiled what this machine can compile: CI has nvcc and a CUDA build of torch but no GPU,
and must still compile the CUDA kernels so a kernel that does not build never lands. And it recorded
the torch it compiled against (tests/test_install.py checks that a mismatch is refused)."""

import json
import os
import shutil

import pytest
import torch

import detlstm
from detlstm import _library


def _cuda_toolchain_present():
    if torch.version.cuda is None:
        return False
    return shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))


@pytest.mark.skipif(not _cuda_toolchain_present(), reason="no nvcc or no CUDA build of torch here")
def test_cuda_extension_was_built():
    if os.environ.get("DETLSTM_CUDA") == "0":
        pytest.skip("DETLSTM_CUDA=0 turned the CUDA build off")
    if _library.BUILT == "on first import" and not torch.cuda.is_available() and \
            os.environ.get("DETLSTM_CUDA") != "1":
        pytest.skip("compiled on first import, which builds the CUDA kernels only where a GPU is visible")
    assert detlstm.HAS_CUDA_KERNELS, "nvcc and a CUDA torch are present but detlstm._C_cuda is missing"


def test_build_recorded_the_running_torch():
    assert _library.TORCH_VERSION_AT_BUILD == torch.__version__
    assert _library.BUILT in ("ahead of time", "on first import")
    folder = os.path.dirname(_library.EXTENSION_FILES["cpu"])
    with open(os.path.join(folder, "_build_record.json")) as f:
        record = json.load(f)
    assert record["torch"] == torch.__version__ and record["detlstm"] == detlstm.__version__
    if _library.BUILT == "ahead of time":
        assert record["cuda_extension"] == detlstm.HAS_CUDA_KERNELS


def test_cpu_kernels_pick_a_variant():
    assert detlstm.set_cpu_variant() in ("avx512", "avx2", "generic")


def test_cuda_launch_variant_is_exported_and_checked():
    assert "set_cuda_launch_variant" in detlstm.__all__
    if not detlstm.HAS_CUDA_KERNELS:
        with pytest.raises(RuntimeError, match="set_cuda_launch_variant: this build of detlstm has no CUDA"):
            detlstm.set_cuda_launch_variant(1)
        return
    previous = detlstm.set_cuda_launch_variant(2)
    try:
        assert detlstm.set_cuda_launch_variant(3) == 2
        n = len(detlstm._ops.cuda_launch_shapes())
        with pytest.raises(ValueError, match=rf"launch variant must be in \[0, {n}\), got {n}"):
            detlstm.set_cuda_launch_variant(n)
    finally:
        detlstm.set_cuda_launch_variant(previous)


def test_cuda_launch_variant_without_cuda_kernels_says_so(monkeypatch):
    """What a CPU-only build (no nvcc, or a CPU build of torch) answers."""
    from detlstm import _ops

    monkeypatch.setattr(_ops, "HAS_CUDA_KERNELS", False)
    with pytest.raises(RuntimeError, match="set_cuda_launch_variant: this build of detlstm has no CUDA"):
        detlstm.set_cuda_launch_variant(1)
