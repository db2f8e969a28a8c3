"""The build compiled what this machine can compile: CI has nvcc and a CUDA build of torch but no GPU,
and must still compile the CUDA kernels so a kernel that does not build never lands."""

import os
import shutil

import pytest
import torch

import detlstm


def _cuda_toolchain_present():
    if torch.version.cuda is None:
        return False
    return shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))


@pytest.mark.skipif(not _cuda_toolchain_present(), reason="no nvcc or no CUDA build of torch here")
def test_cuda_extension_was_built():
    if os.environ.get("DETLSTM_CUDA") == "0":
        pytest.skip("DETLSTM_CUDA=0 turned the CUDA build off")
    assert detlstm.HAS_CUDA_KERNELS, "nvcc and a CUDA torch are present but detlstm._C_cuda is missing"


def test_cpu_kernels_pick_a_variant():
    assert detlstm.set_cpu_variant() in ("avx2", "generic")
