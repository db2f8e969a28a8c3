"""Installing detlstm as users type it: plain `pip install .`, whose isolated build has no torch, so the
package ships its C++ sources and compiles them on first import (detlstm/_jit.py); and the check, on
every import, that compiled extensions were built against the torch that loads them.

The fresh environment is a new virtual environment that sees the torch of this one through a path
file (a .pth naming a folder of links to this environment's packages, less detlstm and pip): torch
imports there as if installed, pip's build isolation hides it from the build as it hides an installed
torch (checked: the installed package has no compiled extension, only sources), and the test does not
spend minutes copying torch in. Its cache (DETLSTM_CACHE_DIR) is a temporary folder; DETLSTM_CUDA=0
keeps the build to the CPU extension on a GPU machine too.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
posix_only = pytest.mark.skipif(os.name != "posix", reason="links a fresh environment to this one's torch")

# A fresh process's first use: import, forward and backward, compared with nn.LSTM on the same weights.
CHECK = textwrap.dedent("""
    import json, torch, detlstm
    from detlstm import _library
    torch.manual_seed(0)
    lstm = detlstm.LSTM(3, 5, num_layers=2, bidirectional=True)
    reference = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    reference.load_state_dict(lstm.state_dict())
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = lstm(x)
    out.sum().backward()
    grad, x.grad = x.grad, None
    expected, _ = reference(x)
    expected.sum().backward()
    print(json.dumps({"package": detlstm.__file__, "built": _library.BUILT,
                      "files": _library.EXTENSION_FILES, "torch": _library.TORCH_VERSION_AT_BUILD,
                      "error": max((out - expected).abs().max().item(),
                                   (grad - x.grad).abs().max().item())}))
""")
COMPILING = "detlstm: compiling its C++ extension"


def _link_torch(folder):
    """A folder of links to this environment's packages (torch and its dependencies), less detlstm
    and the installer's own, for a .pth file to add to the fresh environment."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    os.makedirs(folder)
    skip = ("detlstm", "__editable__", "_distutils_hack", "pip", "setuptools", "pkg_resources")
    for name in os.listdir(site):
        if not name.startswith(skip) and not name.endswith(".pth"):
            os.symlink(os.path.join(site, name), os.path.join(folder, name))


def _copy_working_tree(dest):
    """The repository's files as they are now, committed or not (less what git ignores)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = os.path.join(REPO, name)
        if os.path.isfile(source):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, name))


def _run(args, env, cwd, timeout):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with torch, and detlstm installed by plain `pip install .`."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs the git checkout, to copy its working tree")
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PIP_NO_BUILD_ISOLATION", "VIRTUAL_ENV")}
    env.update(DETLSTM_CACHE_DIR=str(root / "cache"), DETLSTM_CUDA="0",
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / "bin" / "python")
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env,
                   root, 60).stdout.strip()
    _link_torch(str(root / "torch"))
    with open(os.path.join(purelib, "torch-from-the-test-environment.pth"), "w") as f:
        f.write(str(root / "torch") + "\n")
    _copy_working_tree(str(root / "src"))
    pip = _run([python, "-m", "pip", "install", "--no-input", str(root / "src")], env, root, 900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    package = os.path.join(purelib, "detlstm")
    return {"python": python, "env": env, "root": root, "package": package}


@pytest.fixture(scope="module")
def first_import(installed):
    """Two fresh processes importing the new install at once: one compiles, the other waits."""
    command = [installed["python"], "-c", CHECK]
    processes = [subprocess.Popen(command, env=installed["env"], cwd=installed["root"], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=1800) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, out + err
    return [(json.loads(out.splitlines()[-1]), err) for out, err in outputs]


@pytest.mark.slow
@posix_only
def test_plain_pip_install_ships_the_sources(installed):
    names = os.listdir(installed["package"])
    assert "_csrc" in names and os.path.isfile(os.path.join(installed["package"], "_csrc", "ops.cpp"))
    compiled = [n for n in names if n.endswith(sysconfig.get_config_var("EXT_SUFFIX"))]
    assert compiled == [], f"the isolated build saw torch and compiled {compiled}"


@pytest.mark.slow
@posix_only
def test_first_import_compiles_once_and_runs(installed, first_import):
    compiling = [err.count(COMPILING) for _, err in first_import]
    assert sum(compiling) == 1, [err for _, err in first_import]
    builder = compiling.index(1)
    assert len(first_import[builder][1].strip().splitlines()) == 1, first_import[builder][1]
    for result, _ in first_import:
        assert result["package"].startswith(installed["package"])
        assert result["built"] == "on first import"
        assert result["files"]["cpu"].startswith(installed["env"]["DETLSTM_CACHE_DIR"])
        assert result["files"] == first_import[0][0]["files"]
        assert result["torch"] == torch.__version__
        assert result["error"] < 1e-5


@pytest.mark.slow
@posix_only
def test_second_import_uses_the_cache(installed, first_import):
    library = first_import[0][0]["files"]["cpu"]
    before = os.stat(library).st_mtime_ns
    again = _run([installed["python"], "-c", CHECK], installed["env"], installed["root"], 300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr == ""
    assert json.loads(again.stdout.splitlines()[-1])["files"]["cpu"] == library
    assert os.stat(library).st_mtime_ns == before


@pytest.mark.slow
@posix_only
def test_cache_built_for_another_torch_is_refused(installed, first_import):
    folder = os.path.dirname(first_import[0][0]["files"]["cpu"])
    record_path = os.path.join(folder, "_build_record.json")
    with open(record_path) as f:
        record = f.read()
    with open(record_path, "w") as f:
        json.dump(dict(json.loads(record), torch="1.0.0"), f)
    try:
        run = _run([installed["python"], "-c", "import detlstm"], installed["env"], installed["root"],
                   300)
    finally:
        with open(record_path, "w") as f:
            f.write(record)
    assert run.returncode != 0
    message = run.stderr.strip().splitlines()[-1]
    assert "TorchMismatchError" in message and "built against torch 1.0.0" in message
    assert f"torch {torch.__version__} is installed" in message and f"Remove {folder}" in message


@pytest.mark.slow
@pytest.mark.parametrize("record", [{"torch": "1.0.0"}, None], ids=["other torch", "no record"])
def test_prebuilt_extension_for_another_torch_is_refused_before_loading(tmp_path, record):
    """An ahead-of-time build is checked before its library is opened: here the library is an empty
    file, which would fail with another error if it were loaded."""
    package = tmp_path / "detlstm"
    shutil.copytree(os.path.join(REPO, "detlstm"), package,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_build_record.json"))
    (package / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))).write_bytes(b"")
    if record is not None:
        (package / "_build_record.json").write_text(json.dumps(record))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = _run([sys.executable, "-c", "import detlstm"], env, tmp_path, 300)
    assert run.returncode != 0
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith("detlstm._jit.TorchMismatchError: detlstm: ") and str(package) in message
    assert f"torch {torch.__version__} is installed" in message
    assert "`pip install --no-build-isolation .`" in message
    if record is not None:
        assert "built against torch 1.0.0" in message


def test_cache_folder_is_keyed_by_torch_sources_and_flags(tmp_path, monkeypatch):
    from detlstm import _build_config, _jit

    monkeypatch.setenv("DETLSTM_CACHE_DIR", str(tmp_path / "cache"))
    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(REPO, "csrc"), csrc)
    plan = _jit.cpu_plan(str(csrc))
    folder = _jit.build_folder(plan, str(csrc), torch)
    assert os.path.dirname(folder) == str(tmp_path / "cache")
    assert os.path.basename(folder).startswith(f"{_build_config.VERSION}-torch{torch.__version__}-")
    assert "-cpu-" in os.path.basename(folder)
    assert _jit.build_folder(plan, str(csrc), torch) == folder
    assert _jit.build_folder(plan._replace(cflags=plan.cflags + ["-O2"]), str(csrc), torch) != folder
    with open(csrc / "ops.cpp", "a") as f:
        f.write("// changed\n")
    assert _jit.build_folder(plan, str(csrc), torch) != folder


def test_build_on_import_uses_the_flags_of_setup_py():
    """The same flags as the ahead-of-time build: ours after Python's own (as setuptools orders them)."""
    from detlstm import _build_config, _jit

    csrc = os.path.join(REPO, "csrc")
    plan = _jit.cpu_plan(csrc)
    assert plan.cflags == _build_config.python_cflags() + _build_config.CXX_FLAGS + _build_config.OPENMP_FLAGS
    assert plan.ldflags == _build_config.OPENMP_FLAGS
    assert plan.sources == _build_config.cpu_sources(csrc)
    cuda = _jit.cuda_plan(csrc, torch)
    assert cuda.cuda_cflags[:len(_build_config.NVCC_FLAGS)] == _build_config.NVCC_FLAGS
    assert "--fmad=false" in cuda.cuda_cflags
    assert [f"-gencode=arch=compute_{a},code=sm_{a}" for a in _build_config.cuda_archs()] == \
        cuda.cuda_cflags[len(_build_config.NVCC_FLAGS):]
