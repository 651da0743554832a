"""The `stlight` command without torch installed: parser builds, torch commands say what to install."""

from __future__ import annotations

import subprocess
import sys

from serving import run_cli


def test_help_lists_commands_without_torch() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout


def test_torch_command_without_torch_names_the_extra() -> None:
    result = run_cli("summary", "--preset", "tiny")
    assert result.returncode == 2
    assert "pip install 'stlight[train]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr
