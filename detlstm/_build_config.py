"""Build settings in one place: the version, the compiler flags of the kernels, the sources of each
extension and how to find the CUDA toolkit. Read by setup.py (ahead-of-time build, loaded from its
path without importing the package, and without torch when pip isolates the build), by detlstm/_jit.py
(the build on first import) and by the tests that compile the kernel sources themselves. Nothing here
imports torch at module level; the functions that need it take it as an argument."""

import os
import platform
import shutil
import sys
import sysconfig

VERSION = "0.1.0"

# ARITHMETIC.md rule 2: no contraction of a*b+c into fma behind our back, no fast math.
ARITHMETIC_CXX_FLAGS = ["-ffp-contract=off", "-fno-fast-math"]
CXX_FLAGS = ["-O3"] + ARITHMETIC_CXX_FLAGS
NVCC_FLAGS = [
    "-O3",
    "--fmad=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-ftz=false",
    "-Xcompiler=-ffp-contract=off",
]
# csrc/cuda compiled as plain C++ against tests/cuda_emulation/include (the host emulation of CUDA)
EMULATION_CXX_FLAGS = ["-DDETLSTM_CUDA_EMULATION"] + ARITHMETIC_CXX_FLAGS
# at::parallel_for is a header template: without -fopenmp it compiles to a serial loop in our
# extension even though torch itself runs OpenMP. Linking -fopenmp adds a dependency on libgomp.so.1,
# which resolves to the copy torch already loaded (same soname), so there is one thread pool.
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []
DEFAULT_CUDA_ARCHS = "80;90"
# Written beside the compiled extensions by the build (ahead of time: setup.py; on first import:
# detlstm/_jit.py), and checked before they are loaded: the torch they were compiled against.
BUILD_RECORD = "_build_record.json"


def cpu_sources(csrc):
    """The CPU extension's sources (ops.cpp holds the schemas and the Python module), under csrc."""
    names = ["ops.cpp", os.path.join("cpu", "lstm_cpu_generic.cpp"), os.path.join("cpu", "phase_clock.cpp"),
             os.path.join("cpu", "block_cache.cpp"), os.path.join("cpu", "recurrence_split.cpp")]
    if platform.machine().lower() in ("x86_64", "amd64"):
        names += [os.path.join("cpu", "lstm_cpu_avx2.cpp"), os.path.join("cpu", "lstm_cpu_avx512.cpp")]
    return [os.path.join(csrc, n) for n in names]


def cuda_sources(csrc):
    """The CUDA extension's sources: every .cu and .cpp file of csrc/cuda."""
    folder = os.path.join(csrc, "cuda")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith((".cu", ".cpp")))
    return [os.path.join(csrc, "cuda", n) for n in names]


def cuda_archs():
    """The GPU architectures the CUDA kernels are compiled for ('80;90' unless DETLSTM_CUDA_ARCHS)."""
    return [a for a in os.environ.get("DETLSTM_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";") if a]


def cpu_compile_args():
    """The CPU extension's flags: {'cxx': compile flags, 'ld': link flags}."""
    return {"cxx": CXX_FLAGS + OPENMP_FLAGS, "ld": list(OPENMP_FLAGS)}


def python_cflags():
    """What setuptools puts before our flags in every ahead-of-time compile: Python's own CFLAGS
    (here -DNDEBUG, which turns torch's debug-only checks off, -fwrapv, -O3 and warnings), which
    torch's load() does not add. The build on first import adds them itself, so both compile the
    same code; less -g (debug information only)."""
    return [f for f in (sysconfig.get_config_var("CFLAGS") or "").split() if not f.startswith("-g")]


def cuda_compile_args(torch):
    """The CUDA extension's flags: {'cxx': for its .cpp files, 'nvcc': for its .cu files}."""
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in cuda_archs()]
    return {"cxx": CXX_FLAGS + wheel_header_flags(torch), "nvcc": NVCC_FLAGS + gencode}


def wheel_header_flags(torch):
    """pip's CUDA build of torch carries headers a bare toolkit may lack (cusparse.h and others, which
    torch's CUDA headers include). Searched after every other folder, so they only fill gaps."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    flags = []
    for sub in ("cu13", "cu12"):
        extra = os.path.join(site, "nvidia", sub, "include")
        if os.path.isdir(extra):
            flags += ["-idirafter", extra]
    return flags


def cuda_home():
    """The CUDA toolkit folder for torch's extension builder: CUDA_HOME or CUDA_PATH when set, else the
    folder whose include/ has the CUDA runtime headers. torch guesses from the nvcc on PATH, which is
    wrong when that nvcc is a wrapper script. None when there is none."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(name):
            return os.environ[name]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            return home
    return None


def cuda_toolchain(torch):
    """Whether the CUDA extension can be compiled here: a CUDA build of torch, and nvcc on PATH or a
    CUDA_HOME."""
    if torch.version.cuda is None:
        return False
    return shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))


def build_record(torch, with_cuda):
    """What the build records beside the extensions (see BUILD_RECORD)."""
    return {"detlstm": VERSION, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "python": sys.implementation.cache_tag, "cuda_extension": bool(with_cuda)}
