"""The `stlight` command without torch installed: parser builds, torch commands say what to install."""

from __future__ import annotations

import subprocess
import sys

# Runs `stlight ARGS` in a fresh interpreter where importing torch (or onnx) fails as if absent.
_BLOCKED = """
import sys
from importlib.abc import MetaPathFinder

class _NoTorch(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'onnx', 'onnxscript'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
from service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _stlight_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCKED, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands_without_torch() -> None:
    result = _stlight_without_torch("--help")
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout


def test_torch_command_without_torch_names_the_extra() -> None:
    result = _stlight_without_torch("summary", "--preset", "tiny")
    assert result.returncode == 2
    assert "pip install 'stlight[train]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr
