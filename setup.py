"""Build detlstm's extensions against the torch that is installed where they will run.

The CPU extension (detlstm._C) always builds. The CUDA extension (detlstm._C_cuda) builds where nvcc
and a CUDA build of torch are present; DETLSTM_CUDA=0 or 1 overrides the detection (1 fails loudly if
it cannot build). Install with `pip install --no-build-isolation .` (or `make`, which does it): an
isolated build would compile against a different torch than the one that imports the result.
"""

import os
import platform
import runpy
import shutil
import sys

from setuptools import find_packages, setup

def _locate_cuda_home():
    """CUDA_HOME for torch's extension builder: the folder whose include/ has the CUDA runtime
    headers. torch guesses from the nvcc on PATH, which is wrong when that nvcc is a wrapper script."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            os.environ["CUDA_HOME"] = home
            return


_locate_cuda_home()

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only by a wrong install command
    sys.exit(
        "detlstm: torch is not importable in this build environment. detlstm compiles against the "
        "torch installed where it runs: install torch first, then run "
        "`pip install --no-build-isolation .` (see README.md)."
    )

HERE = os.path.dirname(os.path.abspath(__file__))

# The version and the kernels' compiler flags live in detlstm/_build_config.py (one place, shared with
# the tests that compile kernel sources); read without importing the package, which needs the build.
# The C++ standard is left to BuildExtension, which picks the one the installed torch needs.
_CONFIG = runpy.run_path(os.path.join(HERE, "detlstm", "_build_config.py"))
CXX_FLAGS = _CONFIG["CXX_FLAGS"]
NVCC_FLAGS = _CONFIG["NVCC_FLAGS"]
CUDA_ARCHS = os.environ.get("DETLSTM_CUDA_ARCHS", "80;90").split(";")
# at::parallel_for is a header template: without -fopenmp it compiles to a serial loop in our
# extension even though torch itself runs OpenMP. Linking -fopenmp adds a dependency on libgomp.so.1,
# which resolves to the copy torch already loaded (same soname), so there is one thread pool.
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []


def cpu_sources():
    sources = ["csrc/ops.cpp", "csrc/cpu/lstm_cpu_generic.cpp"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        sources.append("csrc/cpu/lstm_cpu_avx2.cpp")
    return sources


def want_cuda():
    setting = os.environ.get("DETLSTM_CUDA")
    available = torch.version.cuda is not None and (
        shutil.which("nvcc") is not None or os.environ.get("CUDA_HOME")
    )
    if setting == "0":
        return False
    if setting == "1":
        if not available:
            sys.exit("detlstm: DETLSTM_CUDA=1 but nvcc or a CUDA build of torch is missing")
        return True
    return bool(available)


def cuda_sources():
    folder = os.path.join(HERE, "csrc", "cuda")
    names = sorted(n for n in os.listdir(folder) if n.endswith((".cu", ".cpp")))
    return [os.path.join("csrc", "cuda", n) for n in names]


def wheel_header_flags():
    """pip's CUDA build of torch carries headers a bare toolkit may lack (cusparse.h and others, which
    torch's CUDA headers include). Searched after every other folder, so they only fill gaps."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    flags = []
    for sub in ("cu13", "cu12"):
        extra = os.path.join(site, "nvidia", sub, "include")
        if os.path.isdir(extra):
            flags += ["-idirafter", extra]
    return flags


ext_modules = [
    CppExtension(
        "detlstm._C",
        cpu_sources(),
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": CXX_FLAGS + OPENMP_FLAGS},
        extra_link_args=OPENMP_FLAGS,
    )
]
if want_cuda() and cuda_sources():
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
    ext_modules.append(
        CUDAExtension(
            "detlstm._C_cuda",
            cuda_sources(),
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": CXX_FLAGS + wheel_header_flags(), "nvcc": NVCC_FLAGS + gencode},
        )
    )

setup(
    name="detlstm",
    version=_CONFIG["VERSION"],
    packages=find_packages(include=["detlstm", "detlstm.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
)
