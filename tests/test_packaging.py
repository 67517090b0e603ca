"""Packaging: pyproject.toml, its console scripts, and the lock files the Makefile installs (docs/install.md)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK = ROOT / "requirements.lock"
GPU_LOCK = ROOT / "requirements-gpu.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

SCRIPTS = {
    "cs336-train": "cs336_basics.cli.train:cli",
    "cs336-generate": "cs336_basics.cli.generate:cli",
    "cs336-verify": "cs336_basics.cli.verify:cli",
    "cs336-bench": "cs336_basics.cli.bench:cli",
    "cs336-export": "cs336_basics.cli.export:cli",
    "cs336-eval": "cs336_basics.cli.eval:cli",
}
DEV_ONLY = {"pytest", "pytest-timeout", "iniconfig", "pluggy", "pygments"}


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def read_lock(path: Path) -> dict[str, Version]:
    """{canonical name: pinned version}; every requirement line must be a bare `name==version`."""
    pins: dict[str, Version] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, \
            f"{path.name}:{n}: {raw!r} is not an exact `name==version` pin"
        assert not req.marker and not req.extras and not req.url, f"{path.name}:{n}: {raw!r} is not a bare pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}:{n}: {req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    assert pins, f"{path.name} pins nothing"
    return pins


# ---------------------------------------------------------------- pyproject.toml and its console scripts


def test_pyproject_metadata():
    project = pyproject()["project"]
    assert project["name"] == "cs336-basics"
    assert project["requires-python"] == ">=3.11"
    assert pyproject()["build-system"]["build-backend"] == "setuptools.build_meta"
    assert pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["cs336_basics*"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert runtime == {"torch", "torchao", "tokenizers", "safetensors", "numpy", "tqdm", "matplotlib", "pyarrow"}
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert dev == {"pytest", "pytest-timeout"}


def test_pyproject_declares_the_console_scripts():
    assert pyproject()["project"]["scripts"] == SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_target_is_an_importable_cli(script: str):
    module_name, attr = SCRIPTS[script].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        pytest.fail(f"{script} points at {SCRIPTS[script]}, but {module_name} cannot be imported: {e}")
    cli = getattr(module, attr, None)
    assert callable(cli), f"{script}: {module_name} has no callable {attr!r}"
    required = [p.name for p in inspect.signature(cli).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not required, f"{script}: {SCRIPTS[script]}() must take no arguments, it requires {required}"


@pytest.mark.timeout(60)
def test_editable_install_runs_each_console_script(tmp_path: Path):
    """`pip install -e` of this checkout into a new venv (offline: no dependencies, no build isolation; the running
    interpreter's packages are visible to it), then each console script's --help exits 0 and the package comes
    from this checkout. About 10 s on 2 cores."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # When this interpreter is itself a venv, --system-site-packages reaches only the base interpreter's packages:
    # make this interpreter's site-packages (torch, pip, setuptools, ...) visible too.
    parent_dirs = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    purelib = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "zz_parent_site.pth").write_text("".join(f"{d}\n" for d in parent_dirs))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "-e", str(ROOT)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert install.returncode == 0, f"pip install -e failed:\n{install.stdout}\n{install.stderr}"

    where = subprocess.run([py, "-c", "import cs336_basics; print(cs336_basics.__file__)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(ROOT), f"cs336_basics imported from {where}, not from {ROOT}"

    procs = {}
    for script in sorted(SCRIPTS):
        exe = venv / "bin" / script
        assert exe.exists(), f"pip install -e did not create the {script} console script"
        procs[script] = subprocess.Popen([str(exe), "--help"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failed = []
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=50)
        if proc.returncode != 0 or "usage" not in out.lower():
            failed.append(f"{script} --help: exit {proc.returncode}\n{out[-1500:]}\n{err[-1500:]}")
    assert not failed, "\n\n".join(failed)


# ---------------------------------------------------------------- lock files


def test_cpu_lock_pins_exactly_without_local_labels_or_test_tools():
    pins = read_lock(CPU_LOCK)
    assert not pins["torch"].local, (f"requirements.lock pins torch=={pins['torch']}: a local label (+cpu) exists "
                                     "only on some indexes; `torch==X.Y.Z` also matches the +cpu build")
    assert not [n for n, v in pins.items() if v.local], "local version labels in requirements.lock"
    assert not DEV_ONLY & pins.keys(), f"test tools belong in {DEV_LOCK.name}: {sorted(DEV_ONLY & pins.keys())}"


def test_gpu_lock_pins_the_measured_stack():
    pins = read_lock(GPU_LOCK)
    assert pins["torch"] == Version("2.11.0")
    assert pins["torchao"] == Version("0.18.0")
    assert pins["triton"] == Version("3.6.0")
    # PyPI's torch 2.11.0 is the CUDA 13.0 build: its CUDA libraries are the 13.0 toolkit's, none for CUDA 12
    assert pins["cuda-toolkit"] == Version("13.0.2")
    assert {"nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= pins.keys()
    assert not [n for n in pins if n.endswith("-cu12")], "CUDA 12 wheels in the CUDA 13 lock"
    assert not [n for n, v in pins.items() if v.local], "local version labels in requirements-gpu.lock"
    assert not DEV_ONLY & pins.keys(), f"test tools belong in {DEV_LOCK.name}: {sorted(DEV_ONLY & pins.keys())}"


def test_dev_lock_pins_the_test_tools_and_the_hf_extra():
    pins = read_lock(DEV_LOCK)
    assert {"pytest", "pytest-timeout", "transformers"} <= pins.keys()
    runtime = {canonicalize_name(Requirement(line).name) for line in pyproject()["project"]["dependencies"]}
    assert not runtime & pins.keys(), f"runtime packages belong in the runtime locks: {sorted(runtime & pins.keys())}"
    for line in pyproject()["project"]["optional-dependencies"]["hf"]:
        req = Requirement(line)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{DEV_LOCK.name} pins {req.name} outside {req}"


@pytest.mark.parametrize("lock", [CPU_LOCK, GPU_LOCK], ids=lambda p: p.name)
def test_lock_satisfies_pyproject_ranges(lock: Path):
    pins = read_lock(lock)
    for line in [*pyproject()["project"]["dependencies"], *pyproject()["build-system"]["requires"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock.name} does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{lock.name} pins {req.name}=={pins[name]}, outside pyproject.toml's {req}"


def test_makefile_installs_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    for lock in (CPU_LOCK, GPU_LOCK, DEV_LOCK):
        assert re.search(rf"^\w+_LOCK := {re.escape(lock.name)}$", makefile, re.M), f"Makefile does not name {lock.name}"
    for name in re.findall(r"[\w./-]+\.lock\b", makefile):
        assert (ROOT / name).is_file(), f"the Makefile names {name}, which does not exist"
    assert "-r $(LOCK) -r $(DEV_LOCK)" in makefile and "--no-deps --no-build-isolation -e ." in makefile
