"""Loading the compiled extensions: the operators and their CPU kernels (always) and the CUDA kernels
(where they were built), as _C and _C_cuda (or None).

Either compiled ahead of time (`pip install --no-build-isolation .`, `make build`): detlstm/_C and
detlstm/_C_cuda beside this file; or compiled on first import from the shipped sources, into a
per-user cache (plain `pip install .`; detlstm/_jit.py). Either way the build recorded the torch it
was compiled against, and that is checked before anything compiled is loaded: an extension built
against another torch is refused with an error that names both versions and the fix.
"""

import importlib.util
import os

import torch

from . import _jit

PREBUILT_FIX = (
    "Rebuild detlstm against the installed torch: `pip install --no-build-isolation .` from its "
    "source (in a checkout: `make clean && make build`), or plain `pip install .` to have it "
    "compiled on first import instead.")


def _load_prebuilt(folder):
    """The ahead-of-time extensions in `folder`, after checking the torch they were built for."""
    record = _jit.check_record(folder, torch, PREBUILT_FIX)
    from . import _C  # registers the detlstm operators and their CPU kernels

    _C_cuda = None
    if record.get("cuda_extension"):  # a separate extension, built where nvcc and a CUDA torch exist
        try:
            from . import _C_cuda
        except ImportError:
            pass
    files = {"cpu": _C.__file__, "cuda": _C_cuda.__file__ if _C_cuda is not None else None}
    return _C, _C_cuda, record, files


def _load():
    prebuilt = importlib.util.find_spec(f"{__package__}._C")
    if prebuilt is not None:
        return ("ahead of time",) + _load_prebuilt(os.path.dirname(prebuilt.origin))
    cpu, cuda = _jit.load_extensions(torch)
    files = {"cpu": cpu.__file__, "cuda": cuda.__file__ if cuda is not None else None}
    return "on first import", cpu, cuda, {"torch": torch.__version__}, files


# BUILT: "ahead of time" or "on first import"; EXTENSION_FILES: {"cpu": path, "cuda": path or None}
BUILT, _C, _C_cuda, _RECORD, EXTENSION_FILES = _load()
HAS_CUDA_KERNELS = _C_cuda is not None
TORCH_VERSION_AT_BUILD = _RECORD["torch"]
