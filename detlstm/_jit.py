"""Compiling the extensions on first import, for an install that shipped their sources (plain
`pip install .`: pip's isolated build has no torch to compile against; see setup.py).

The sources (detlstm/_csrc in an installed package, csrc/ beside the package in a checkout) are
compiled by torch.utils.cpp_extension.load with the flags setup.py uses (detlstm/_build_config.py),
against the torch that imports detlstm, into a per-user cache: DETLSTM_CACHE_DIR, else
$XDG_CACHE_HOME/detlstm, else ~/.cache/detlstm. Each build has its own folder, named by detlstm's
version, torch's version, the Python, CPU or CUDA, and a hash of the sources and flags, so a change
of any of them builds anew and an unchanged one is imported from the cache. A file lock makes
processes that import at once (the ranks of a job) build once: the others wait, then load it.

The build record (detlstm/_build_config.BUILD_RECORD: the torch compiled against) is written beside
each build, ahead of time or here, and checked here before anything compiled is loaded.
"""

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections import namedtuple

from . import _build_config as config

PACKAGE = os.path.dirname(os.path.abspath(__file__))
LIBRARY_SUFFIX = ".pyd" if os.name == "nt" else ".so"  # what torch's load() names its output
# kind: "cpu" or "cuda"; name: the Python module's name (TORCH_EXTENSION_NAME); the rest: load()'s arguments
Plan = namedtuple("Plan", "kind name sources cflags cuda_cflags ldflags")


class TorchMismatchError(ImportError):
    """A compiled extension was built against another torch than the one installed."""


def check_record(folder, torch, fix):
    """Raise TorchMismatchError (naming both versions and `fix`) unless the build record in `folder`
    says its extensions were compiled against the torch that is imported now. Returns the record."""
    path = os.path.join(folder, config.BUILD_RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
        built = record["torch"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TorchMismatchError(
            f"detlstm: the compiled extensions in {folder} have no readable build record ({path}), "
            f"so the torch they were compiled against is unknown (torch {torch.__version__} is "
            f"installed); they are not loaded. {fix}") from None
    if built != torch.__version__:
        raise TorchMismatchError(
            f"detlstm: its compiled extensions ({folder}) were built against torch {built}, but torch "
            f"{torch.__version__} is installed; an extension compiled against another torch cannot be "
            f"loaded safely. {fix}")
    return record


def cache_root():
    if os.environ.get("DETLSTM_CACHE_DIR"):
        return os.path.abspath(os.environ["DETLSTM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "detlstm")


def source_root():
    """The C++/CUDA sources: shipped in the package (an install), or csrc/ of a checkout."""
    for folder in (os.path.join(PACKAGE, "_csrc"), os.path.join(os.path.dirname(PACKAGE), "csrc")):
        if os.path.isfile(os.path.join(folder, "ops.cpp")):
            return folder
    raise ImportError(
        f"detlstm: {PACKAGE} has neither compiled extensions nor the C++ sources to compile them "
        "(_csrc); reinstall detlstm: `pip install .` from its source")


def _source_digest(csrc):
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(csrc):
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, csrc).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()


def build_folder(plan, csrc, torch):
    """The cache folder of one build: readable parts, then a hash of everything that shapes it."""
    settings = [plan.kind, plan.cflags, plan.cuda_cflags, plan.ldflags, platform.machine(),
                os.environ.get("CXX", ""), os.environ.get("CC", ""), _source_digest(csrc)]
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    name = (f"{config.VERSION}-torch{torch.__version__}-{sys.implementation.cache_tag}-"
            f"{plan.kind}-{digest}")
    return os.path.join(cache_root(), name)


def cpu_plan(csrc):
    flags = config.cpu_compile_args()
    return Plan("cpu", "detlstm_C", config.cpu_sources(csrc), config.python_cflags() + flags["cxx"], [],
                flags["ld"])


def cuda_plan(csrc, torch):
    flags = config.cuda_compile_args(torch)
    return Plan("cuda", "detlstm_C_cuda", config.cuda_sources(csrc), config.python_cflags() + flags["cxx"],
                flags["nvcc"], [])


def nvcc_found():
    if shutil.which("nvcc"):
        return True
    home = config.cuda_home()
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def want_cuda(torch):
    """Build the CUDA extension where a GPU is visible, torch is a CUDA build and nvcc is found;
    DETLSTM_CUDA=0 or 1 overrides (1 builds without a GPU, and fails loudly without nvcc)."""
    setting = os.environ.get("DETLSTM_CUDA")
    if setting == "0":
        return False
    toolchain = torch.version.cuda is not None and nvcc_found()
    if setting == "1":
        if not toolchain:
            raise ImportError("detlstm: DETLSTM_CUDA=1 but nvcc or a CUDA build of torch is missing")
        return True
    return toolchain and torch.cuda.is_available()


def _say(message):
    print(f"detlstm: {message}", file=sys.stderr, flush=True)


def _import_library(plan, folder):
    path = os.path.join(folder, plan.name + LIBRARY_SUFFIX)
    spec = importlib.util.spec_from_file_location(plan.name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise ImportError(f"detlstm: cannot load {path} ({error}); remove {folder} and import "
                          "detlstm again to rebuild it") from error
    return module


def _complete(plan, folder):
    """A finished build: its library, and the record, which is written last."""
    return all(os.path.isfile(os.path.join(folder, f))
               for f in (plan.name + LIBRARY_SUFFIX, config.BUILD_RECORD))


def load(plan, csrc, torch):
    """The extension of `plan`, from the cache, or compiled into it first (once across processes)."""
    import filelock  # a dependency of torch

    folder = build_folder(plan, csrc, torch)
    fix = f"Remove {folder}; the next import compiles it again."
    if _complete(plan, folder):
        check_record(folder, torch, fix)
        return _import_library(plan, folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ImportError(f"detlstm: cannot create its build cache {folder} ({error}); set "
                          "DETLSTM_CACHE_DIR to a writable folder") from error
    lock = filelock.FileLock(os.path.join(folder, "build.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        _say(f"waiting for another process that is compiling the {plan.kind.upper()} extension "
             f"into {folder}")
        lock.acquire()
    try:
        if _complete(plan, folder):  # built by the process this one waited for
            check_record(folder, torch, fix)
            return _import_library(plan, folder)
        module = _compile(plan, csrc, folder, torch)
        _write_record(folder, config.build_record(torch, plan.kind == "cuda"))
        return module
    finally:
        lock.release()


def _write_record(folder, record):
    """Written last, and atomically: a build with a record is complete."""
    temporary = os.path.join(folder, config.BUILD_RECORD + f".{os.getpid()}.tmp")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(temporary, os.path.join(folder, config.BUILD_RECORD))


def _compile(plan, csrc, folder, torch):
    if plan.kind == "cpu":
        what, duration = "C++ extension", "about a minute"
    else:
        what = f"CUDA extension (for {', '.join('sm_' + a for a in config.cuda_archs())})"
        duration = "several minutes"
    _say(f"compiling its {what} for torch {torch.__version__} (first import with this torch only; "
         f"{duration}) into {folder}")
    cpp_extension = _cpp_extension()
    if plan.kind == "cuda":
        _settle_cuda_home(cpp_extension)
    try:
        with _ninja_on_path():
            return cpp_extension.load(name=plan.name, sources=plan.sources, extra_cflags=plan.cflags,
                               extra_cuda_cflags=plan.cuda_cflags, extra_ldflags=plan.ldflags,
                               extra_include_paths=[csrc], build_directory=folder, verbose=False)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        needs = "a C++ compiler (CXX chooses it)"
        if plan.kind == "cuda":
            needs = "nvcc of the CUDA version torch was built with, a C++ compiler"
        skip = " (DETLSTM_CUDA=0 skips the CUDA extension)" if plan.kind == "cuda" else ""
        raise ImportError(
            f"detlstm: compiling its {what} in {folder} failed{skip}; the compiler's output is in "
            f"the error above. It needs {needs} and ninja; or install detlstm with its extensions "
            "compiled ahead of time: `pip install --no-build-isolation .`") from error


def _cpp_extension():
    """torch.utils.cpp_extension, imported without its warning that no GPU is visible (expected when
    only the CPU extension is built)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def _settle_cuda_home(cpp_extension):
    """torch guesses the CUDA toolkit from the nvcc on PATH, wrongly when that nvcc is a wrapper
    script: use the folder that has the CUDA headers (as setup.py does) when its guess has none."""
    current = cpp_extension.CUDA_HOME
    if current and os.path.isfile(os.path.join(current, "include", "cuda_runtime_api.h")):
        return
    home = config.cuda_home()
    if home:
        cpp_extension.CUDA_HOME = home


@contextlib.contextmanager
def _ninja_on_path():
    """torch runs `ninja` from PATH; a virtual environment used without activating it has its ninja
    (a dependency of a detlstm that compiles on import) beside its python, not on PATH."""
    saved = os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
            if folder and shutil.which("ninja", path=folder):
                os.environ["PATH"] = folder + os.pathsep + saved
                break
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def load_extensions(torch):
    """(CPU module, CUDA module or None) for a package without prebuilt ones."""
    csrc = source_root()
    cpu = load(cpu_plan(csrc), csrc, torch)
    cuda = None
    if want_cuda(torch) and config.cuda_sources(csrc):
        cuda = load(cuda_plan(csrc, torch), csrc, torch)
    return cpu, cuda
