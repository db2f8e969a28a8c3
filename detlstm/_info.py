"""python -m detlstm info: what a bug report needs, and a one-second self-check.

Prints detlstm's version, the torch it runs with and the one it was built against (where the build
recorded it), the compiled extension in use, the CPU kernel build in use and what the processor
supports, the thread count, whether the CUDA kernels are present and for which GPU architectures,
and the GPUs in view. Then the self-check: a fixed small case (2-layer bidirectional LSTM, dropout
with an explicit seed, uneven lengths, given initial state; forward and backward on the CPU) is run
under every CPU kernel build this processor can run, at 1 thread and at more, and the SHA-256 of its
outputs and gradients must equal SELF_CHECK_SHA256 every time. The exit status is 0 on PASS, 1 on
FAIL.

The case uses no random generator: its inputs and weights are exact binary fractions computed from
integer hashes, its dropout seed is explicit, and its loss gradients are given directly, so every
float operation in it is one of detlstm's kernels'. The arithmetic contract (docs/ARITHMETIC.md)
makes its hash the same on every machine, thread count and kernel build; a machine that computes
another hash has found a bug. The hash changes only with the contract.
"""

import argparse
import hashlib
import json
import os
import platform
import struct
import subprocess
import sys

import torch

from . import _build_config, _ops

# SHA-256 of self_check_results(). Regenerate only after a deliberate change of the arithmetic
# contract (docs/ARITHMETIC.md), never to make a failing machine pass:
#   python -c "import detlstm._info as i; print(i.self_check_digest())"
# and check that tests/test_info.py still finds the same value at 1 and 2 threads and under every
# CPU kernel build.
SELF_CHECK_SHA256 = "adae4d4f2f40fb93ce4e1b2b4e428705f30e2b1b293e97c74e117ca171161e92"

# The case: T steps, B sequences of LENGTHS, I input features (two 64-term chunks in every input
# product of layer 0), H hidden units (4H = 96 gate rows: two chunks in every backward sum over gates), and the
# sum of the lengths (77) spans two chunks in every weight-gradient sum.
_T, _B, _I, _H = 20, 6, 70, 24
_LENGTHS = (20, 7, 13, 1, 20, 16)
_DROPOUT, _DROPOUT_SEED = 0.4, 20261123


def _exact_values(shape, salt: int) -> torch.Tensor:
    """float32 values in [-1, 1), multiples of 2^-20 (so exactly representable), from an integer
    hash of each element's index: the same on every machine, no random generator involved."""
    count = 1
    for n in shape:
        count *= n
    v = (torch.arange(count, dtype=torch.int64) * 2654435761 + salt * 40503 + 12345) % (1 << 32)
    v = v ^ (v >> 15)
    v = (v * 0x7FEB352D) % (1 << 32)  # v < 2^32 and the factor < 2^31: no int64 overflow
    v = v ^ (v >> 13)
    return ((v >> 11) - (1 << 20)).to(torch.float32).mul_(2.0 ** -20).reshape(shape)


def self_check_results() -> list:
    """The fixed case, forward and backward on the CPU: [output, h_n, c_n, grad of x, h0, c0, then
    of every parameter in named_parameters() order]."""
    from .module import LSTM
    model = LSTM(_I, _H, num_layers=2, bidirectional=True, dropout=_DROPOUT)
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.copy_(_exact_values(p.shape, 100 + k).mul_(0.25))
    model.train()
    x = _exact_values((_T, _B, _I), 1).requires_grad_()
    h0 = _exact_values((4, _B, _H), 2).mul_(0.5).requires_grad_()
    c0 = _exact_values((4, _B, _H), 3).requires_grad_()
    out, (h_n, c_n) = model(x, (h0, c0), lengths=list(_LENGTHS), dropout_seed=_DROPOUT_SEED)
    grads = [_exact_values(t.shape, 4 + k) for k, t in enumerate((out, h_n, c_n))]
    torch.autograd.backward([out, h_n, c_n], grads)
    return [out, h_n, c_n, x.grad, h0.grad, c0.grad] + [p.grad for p in model.parameters()]


def self_check_digest() -> str:
    digest = hashlib.sha256()
    for t in self_check_results():
        t = t.detach().contiguous().view(-1)
        digest.update(struct.pack(f"<{t.numel()}f", *t.tolist()))  # little-endian on every host
    return digest.hexdigest()


def cpu_variants() -> tuple:
    """(the CPU kernel build in use, the one this processor would pick by default, every build it
    can run). The default is the widest the processor has: 'avx512' (AVX-512 F, VL, DQ, BW), 'avx2'
    (AVX2 and FMA), else 'generic'."""
    current = _ops.set_cpu_variant("default")
    best = _ops.set_cpu_variant(current)
    ladder = ("generic", "avx2", "avx512")
    return current, best, ladder[:ladder.index(best) + 1]


def self_check(expected: str = None) -> tuple:
    """Runs the case under every CPU build this processor can run, at 1 thread and at the current
    count (2 if that is 1). Returns (passed, {(variant, threads): digest})."""
    expected = SELF_CHECK_SHA256 if expected is None else expected
    current, _, variants = cpu_variants()
    threads = torch.get_num_threads()
    digests = {}
    try:
        for variant in variants:
            _ops.set_cpu_variant(variant)
            for n in sorted({1, threads if threads > 1 else 2}):
                torch.set_num_threads(n)
                digests[(variant, n)] = self_check_digest()
    finally:
        _ops.set_cpu_variant(current)
        torch.set_num_threads(threads)
    return all(d == expected for d in digests.values()), digests


def elf_section(path: str, name: str):
    """The bytes of section `name` of a 64-bit little-endian ELF file, or None (not such a file, or
    no such section)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return None
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        entsize, count, names_index = struct.unpack_from("<HHH", head, 0x3A)
        if count == 0 or names_index >= count:
            return None
        f.seek(shoff)
        table = f.read(entsize * count)
        headers = [struct.unpack_from("<IIQQQQ", table, i * entsize) for i in range(count)]
        f.seek(headers[names_index][4])
        names = f.read(headers[names_index][5])
        for name_at, _type, _flags, _addr, offset, size in headers:
            if names[name_at:names.index(b"\0", name_at)].decode() == name:
                f.seek(offset)
                return f.read(size)
    return None


_FATBIN_MAGIC = 0xBA55ED50


def fatbin_architectures(path: str):
    """The GPU code in a CUDA library's .nv_fatbin section, as a sorted list like ['sm_80', 'sm_90']
    (machine code) and 'compute_80' (PTX, compiled for the GPU at load time); None when the file has
    no such section. Each container is a 16-byte header (magic, version, header size, payload size)
    followed by entries whose header holds the kind (1 PTX, 2 machine code) at 0 and the
    architecture at 28."""
    blob = elf_section(path, ".nv_fatbin")
    if blob is None:
        return None
    found, at = set(), 0
    while at + 16 <= len(blob):
        magic, _version, header, size = struct.unpack_from("<IHHQ", blob, at)
        if magic != _FATBIN_MAGIC:
            at += 8  # containers are 8-byte aligned
            continue
        entry, end = at + header, at + header + size
        while entry + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            if kind in (1, 2):  # (other kinds, such as LTO intermediate code, are not listed)
                found.add(f"{'compute' if kind == 1 else 'sm'}_{arch}")
            entry += entry_header + payload
        at = end
    return sorted(found, key=lambda a: (int(a.split("_")[1]), a))


def runs_on(architectures, capability) -> bool:
    """Whether code for `architectures` runs on a GPU of compute capability (major, minor): machine
    code sm_XY runs on the same major version with a minor version >= Y; PTX compute_XY on any GPU
    of capability >= X.Y (compiled by the driver when loaded)."""
    major, minor = capability
    for arch in architectures:
        kind, number = arch.split("_")
        arch_major, arch_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def _extension_path(which: str):
    """The file of the loaded extension `which` ('_C' or '_C_cuda'), or None."""
    return getattr(getattr(_ops, which, None), "__file__", None)


def build_record():
    """What the build recorded (the torch it was compiled against, ...): as the loader read it, else
    the file _build_config.BUILD_RECORD names beside the loaded CPU extension; None without one."""
    record = getattr(sys.modules.get("detlstm._library"), "_RECORD", None)
    if isinstance(record, dict):
        return record
    name, path = getattr(_build_config, "BUILD_RECORD", None), _extension_path("_C")
    if not name or not path:
        return None
    try:
        with open(os.path.join(os.path.dirname(path), name)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _git_revision():
    """' (git abc1234)' when detlstm is imported from a git checkout of itself, else ''."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isdir(os.path.join(root, ".git")):
        return ""
    try:
        run = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {run.stdout.strip()})" if run.returncode == 0 and run.stdout.strip() else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flush_to_zero() -> str:
    """Whether this thread flushes subnormal results (FTZ) or inputs (DAZ) to zero in torch's ops."""
    tiny = torch.tensor([2.0 ** -100], dtype=torch.float32)
    ftz = (tiny * 2.0 ** -40).item() == 0.0  # 2^-140 is subnormal in float32
    daz = (torch.tensor([2.0 ** -140], dtype=torch.float32) * 2.0 ** 40).item() == 0.0
    if not (ftz or daz):
        return "off"
    return ("on (torch.set_flush_denormal(True) or a fast-math library?); detlstm's CPU kernels "
            "clear it for their own work, torch's ops around them do not")


def _field(label: str, value: str) -> str:
    return f"{label + ':':<16} {value}"


def version_lines() -> list:
    record = build_record() or {}
    built = record.get("torch")
    if built and record.get("torch_cuda"):
        built += f" (CUDA {record['torch_cuda']})"
    how = getattr(sys.modules.get("detlstm._library"), "BUILT", None)  # ahead of time / on first import
    built_how = f" (compiled {how})" if isinstance(how, str) else ""
    return [
        _field("detlstm", f"{_build_config.VERSION}{_git_revision()} at "
                          f"{os.path.dirname(os.path.abspath(__file__))}"),
        _field("torch", f"{torch.__version__} running ("
                        f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'}); "
                        f"built against: {built or 'not recorded by this build'}"),
        _field("extension", f"{_extension_path('_C') or 'unknown'}{built_how}"),
        _field("python", f"{platform.python_version()} on {platform.platform()}"),
    ]


def cpu_lines() -> list:
    current, best, _ = cpu_variants()
    supports = {"avx512": "AVX-512 and AVX2+FMA", "avx2": "AVX2 and FMA, no AVX-512"}.get(
        best, "no AVX2+FMA, or not x86-64")
    return [
        _field("CPU", _cpu_model()),
        _field("CPU kernels", f"'{current}' in use (this CPU: {supports}; default '{best}'); "
                              f"torch's own CPU capability {torch.backends.cpu.get_cpu_capability()}"),
        _field("threads", f"{torch.get_num_threads()} (torch.get_num_threads; OMP_NUM_THREADS="
                          f"{os.environ.get('OMP_NUM_THREADS', 'unset')})"),
        _field("flush-to-zero", _flush_to_zero()),
    ]


def cuda_lines() -> list:
    lines = [_field("torch GPU archs", " ".join(torch.cuda.get_arch_list()) or "none")]
    if not _ops.HAS_CUDA_KERNELS:
        lines.append(_field("CUDA kernels", "not built (no nvcc or no CUDA build of torch at build time)"))
        archs = None
    else:
        path = _extension_path("_C_cuda")
        try:
            archs = fatbin_architectures(path) if path else None
        except (OSError, ValueError, IndexError, struct.error):  # not a file this reader knows
            archs = None
        lines.append(_field("CUDA kernels", f"built, for {' '.join(archs) if archs else 'unknown archs'}"
                                            f" ({path})"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        lines.append(_field("GPUs", "none visible"))
    for i in range(count):
        capability = torch.cuda.get_device_capability(i)
        if archs is None:
            verdict = "no detlstm kernels" if not _ops.HAS_CUDA_KERNELS else "unknown"
        else:
            verdict = "detlstm has code for it" if runs_on(archs, capability) else \
                "NO detlstm code for this architecture: rebuild with DETLSTM_CUDA_ARCHS"
        lines.append(_field(f"GPU {i}", f"{torch.cuda.get_device_name(i)}, "
                                        f"sm_{capability[0]}{capability[1]}: {verdict}"))
    return lines


def self_check_lines(expected: str = None) -> tuple:
    passed, digests = self_check(expected)
    first = next(iter(digests.values()))
    runs = ", ".join(f"{variant} at {threads} thread{'s' if threads > 1 else ''}"
                     for variant, threads in digests)
    lines = [_field("self-check", f"{'PASS' if passed else 'FAIL'} ({runs}: "
                                  f"{'one hash' if len(set(digests.values())) == 1 else 'different hashes'})"),
             f"  hash {first}"]
    if not passed:
        lines.append(f"  expected {SELF_CHECK_SHA256 if expected is None else expected}")
        lines += [f"  {variant} at {threads}: {d}" for (variant, threads), d in digests.items()]
    return passed, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detlstm info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    for line in version_lines() + cpu_lines() + cuda_lines():
        print(line, flush=True)
    passed, lines = self_check_lines()
    print("\n".join(lines))
    return 0 if passed else 1
