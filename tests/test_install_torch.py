"""scripts/install_torch.sh's choice of torch build, with a stand-in interpreter and pip: which requirement
it installs and from which index, on a machine without a GPU (a local CPU wheel, or PyPI's CUDA build),
with one, when the CPU index is unreachable, and when a fitting torch is already there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the venv's python: `-` (the torch check) exits as $HAS_TORCH says; `-c` runs the real python;
# `-m pip install --dry-run` reports $PIP_WOULD_TAKE; `-m pip install` logs its arguments (failing with
# $INDEX_FAILS when given --index-url)
if [ "$1" = "-" ]; then cat >/dev/null; [ "$HAS_TORCH" = 1 ]; exit $?; fi
if [ "$1" = "-c" ]; then
  case "$2" in *torch.__version__*) echo 2.13.0+cpu; exit 0;; esac
  exec "$REAL_PYTHON" "$@"
fi
if [ "$1 $2 $3" = "-m pip install" ]; then
  shift 3
  case " $* " in
    *" --dry-run "*) printf '{"install": [{"metadata": {"version": "%s"}}]}' "$PIP_WOULD_TAKE"; exit 0;;
  esac
  echo "$*" >> "$PIP_LOG"
  case " $* " in *" --index-url "*) [ "$INDEX_FAILS" = 1 ] && exit 1;; esac
  exit 0
fi
exit 2
"""


def install(tmp_path: Path, *, has_torch: bool = False, would_take: str = "2.13.0+cpu", gpu: bool = False,
            index_fails: bool = False, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Run the script; returns (each pip install's arguments, its output)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/usr/bin/env bash\necho 'GPU 0: NVIDIA H200'\n")
        smi.chmod(0o755)
    log = tmp_path / "pip.log"
    log.write_text("")
    tools = {os.path.dirname(shutil.which(t)) for t in ("bash", "cat", "env")}
    run_env = {"PATH": os.pathsep.join([str(bin_dir), *sorted(tools)]), "HAS_TORCH": str(int(has_torch)),
               "PIP_WOULD_TAKE": would_take, "INDEX_FAILS": str(int(index_fails)), "PIP_LOG": str(log),
               "REAL_PYTHON": sys.executable, **(env or {})}
    done = subprocess.run(["bash", str(SCRIPT), str(python)], env=run_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in log.read_text().splitlines() if line], done.stdout + done.stderr


@pytest.fixture(autouse=True)
def _no_host_gpu_tool(monkeypatch):
    if shutil.which("nvidia-smi") and os.path.dirname(shutil.which("nvidia-smi")) in {
            os.path.dirname(shutil.which(t)) for t in ("bash", "cat", "env")}:
        pytest.skip("nvidia-smi sits beside bash here: the no-GPU cases cannot hide it")


def test_a_local_cpu_wheel_is_taken_as_pip_resolves_it(tmp_path):
    calls, _ = install(tmp_path, would_take="2.13.0+cpu")
    assert calls == ["torch==2.13.0"]


def test_without_a_gpu_pypis_cuda_build_is_replaced_by_the_cpu_index(tmp_path):
    calls, out = install(tmp_path, would_take="2.13.0")
    assert calls == [f"torch==2.13.0 --index-url {CPU_INDEX}"]
    assert "a CUDA build; no GPU here: taking the CPU build" in out


def test_an_unreachable_cpu_index_falls_back_to_pypi_with_a_warning(tmp_path):
    calls, out = install(tmp_path, would_take="2.13.0", index_fails=True)
    assert calls == [f"torch==2.13.0 --index-url {CPU_INDEX}", "torch==2.13.0"]
    assert f"WARNING: {CPU_INDEX} unreachable" in out


def test_with_a_gpu_pip_takes_its_default_cuda_build(tmp_path):
    calls, _ = install(tmp_path, gpu=True, would_take="2.13.0")
    assert calls == ["torch>=2.3,<3"]


def test_a_fitting_torch_is_kept_and_the_variables_are_obeyed(tmp_path):
    calls, out = install(tmp_path, has_torch=True)
    assert calls == [] and "satisfies >=2.3,<3" in out
    calls, _ = install(tmp_path, would_take="2.13.0",
                       env={"EMERGELAB_TORCH": "torch==2.12.0", "EMERGELAB_TORCH_INDEX": "https://example.org/whl"})
    assert calls == ["torch==2.12.0 --index-url https://example.org/whl"]
