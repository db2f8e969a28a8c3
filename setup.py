"""Build detlstm's extensions against the torch that is installed where they will run.

Two ways, chosen by whether torch can be imported by this build:

- Ahead of time (`pip install --no-build-isolation .`, or `-e .`, as `make` does): torch is importable,
  so the extensions are compiled now against it. The CPU extension (detlstm._C) always builds; the
  CUDA extension (detlstm._C_cuda) builds where nvcc and a CUDA build of torch are present, and
  DETLSTM_CUDA=0 or 1 overrides the detection (1 fails loudly if it cannot build). The torch version
  is recorded beside them (detlstm/_build_record.json) and checked on import.
- On first import (plain `pip install .`: pip builds in an isolated environment without torch): the
  C++/CUDA sources are shipped inside the package (detlstm/_csrc) and detlstm/_jit.py compiles them,
  with the same flags, against the torch that imports detlstm, into a per-user cache.
"""

import importlib.util
import json
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_config():
    """detlstm/_build_config.py, read without importing the package (which needs the build)."""
    path = os.path.join(HERE, "detlstm", "_build_config.py")
    spec = importlib.util.spec_from_file_location("_detlstm_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIG = _load_build_config()

# torch's extension builder reads CUDA_HOME when it is imported: settle it first.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and CONFIG.cuda_home():
    os.environ["CUDA_HOME"] = CONFIG.cuda_home()

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:
    torch = None


def want_cuda():
    setting = os.environ.get("DETLSTM_CUDA")
    if setting == "0":
        return False
    available = CONFIG.cuda_toolchain(torch)
    if setting == "1" and not available:
        sys.exit("detlstm: DETLSTM_CUDA=1 but nvcc or a CUDA build of torch is missing")
    return bool(available)


def extensions():
    """The ahead-of-time extensions (sources relative to this folder, as setuptools wants them)."""
    cpu = CONFIG.cpu_compile_args()
    modules = [CppExtension("detlstm._C", CONFIG.cpu_sources("csrc"), include_dirs=[os.path.join(HERE, "csrc")],
                            extra_compile_args={"cxx": cpu["cxx"]}, extra_link_args=cpu["ld"])]
    if want_cuda() and CONFIG.cuda_sources("csrc"):
        modules.append(CUDAExtension("detlstm._C_cuda", CONFIG.cuda_sources("csrc"),
                                     include_dirs=[os.path.join(HERE, "csrc")],
                                     extra_compile_args=CONFIG.cuda_compile_args(torch)))
    return modules


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_and_record():
    """BuildExtension that writes the build record beside the extensions (in the build folder, and
    in the source tree for an in-place or editable build). A build whose record names another torch
    is redone even where the sources did not change: setuptools compares only their dates."""

    class BuildAndRecord(BuildExtension):
        def run(self):
            record = CONFIG.build_record(torch, any(e.name == "detlstm._C_cuda" for e in self.extensions))
            built = os.path.dirname(os.path.join(self.build_lib, self.get_ext_filename("detlstm._C")))
            folders = [built]
            if self.inplace:
                folders.append(self.get_finalized_command("build_py").get_package_dir("detlstm"))
            if any(_read_json(os.path.join(f, CONFIG.BUILD_RECORD)) != record for f in folders):
                self.force = True
            super().run()
            for folder in folders:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, CONFIG.BUILD_RECORD), "w") as f:
                    json.dump(record, f, indent=1)

    return BuildAndRecord


class BuildPy(build_py):
    """Ships csrc/ inside the package (detlstm/_csrc) when the extensions are compiled on first import,
    and clears what a build of the other kind left in the build folder: a wheel packs all of it."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads csrc/ in place
            return
        package = os.path.join(self.build_lib, "detlstm")
        shutil.rmtree(os.path.join(package, "_csrc"), ignore_errors=True)
        if torch is not None:
            return
        for name in os.listdir(package):
            if name.startswith(("_C.", "_C_cuda.")) or name == CONFIG.BUILD_RECORD:
                os.remove(os.path.join(package, name))
        shutil.copytree(os.path.join(HERE, "csrc"), os.path.join(package, "_csrc"))


if torch is not None:
    options = {"ext_modules": extensions(), "cmdclass": {"build_py": BuildPy, "build_ext": build_and_record()}}
else:
    print("detlstm: torch is not importable in this build environment (pip's build isolation); "
          "shipping the C++/CUDA sources, compiled on first import against the installed torch. "
          "`pip install --no-build-isolation .` compiles them now instead.", file=sys.stderr)
    # ninja: torch's builder needs it at import time
    options = {"cmdclass": {"build_py": BuildPy}, "install_requires": ["ninja"]}

setup(
    name="detlstm",
    version=CONFIG.VERSION,
    packages=find_packages(include=["detlstm", "detlstm.*"]),
    python_requires=">=3.10",
    **options,
)
