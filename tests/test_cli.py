"""The `stlight` command without torch installed: parser builds, torch commands say what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serving import REPO, run_cli


def test_help_lists_commands_without_torch() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "summary" in result.stdout


TRAIN_HINT = "pip install -e '.[train]' -c constraints.txt (in the stlight checkout)"

# `stlight ARGS` with only these packages made to fail to import, as where they are not installed
WITHOUT = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in this process)", name=name)
        return None
sys.meta_path.insert(0, _Missing())
from service.cli.stlight import main
sys.exit(main(sys.argv[1:]))
"""


def test_torch_command_without_torch_names_the_extra_as_installed_from_the_checkout() -> None:
    result = run_cli("summary", "--preset", "tiny")
    assert result.returncode == 2
    assert "needs PyTorch (the train extra): " + TRAIN_HINT in result.stderr, result.stderr
    assert "stlight[" not in result.stderr  # on no index: that spelling cannot resolve
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_export_with_torch_but_without_the_exporter_names_what_is_missing(missing: str, tmp_path: Path) -> None:
    blocked = "onnx,onnxscript" if missing == "onnx" else "onnxscript"
    argv = [sys.executable, "-c", WITHOUT, blocked, "export", "--preset", "tiny", "--out", str(tmp_path / "m.onnx")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert f"needs {missing} (the train extra): {TRAIN_HINT}; missing module '{missing}'" in result.stderr, result.stderr
    assert "PyTorch" not in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "service.cli", "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def _serve_args(*argv: str) -> Any:
    import argparse

    from service.cli.serve import add_serve, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers())
    return settings_from_args(parser.parse_args(["serve", *argv]))


def test_every_serve_setting_but_secrets_is_a_flag_with_its_default_and_variable_in_the_help() -> None:
    from service.server.settings import ServeSettings

    help_text = run_cli("serve", "--help").stdout
    for name in ServeSettings.model_fields:
        if name == "api_keys":  # a secret: never on the command line, where process listings show it
            assert "--api-keys " not in help_text
            continue
        flag = "--no-access-log" if name == "access_log" else "--" + name.replace("_", "-")
        assert flag in help_text, flag
        assert f"STLIGHT_{name.upper()}" in help_text, name


def test_serve_flags_override_settings_with_their_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STLIGHT_QUEUE_SIZE", "7")
    monkeypatch.setenv("STLIGHT_PORT", "9")
    settings = _serve_args("--port", "0", "--max-horizon", "12", "--ort-spinning", "off", "--tf32", "--no-access-log")
    assert settings.port == 0 and settings.queue_size == 7
    assert settings.max_horizon == 12 and settings.ort_spinning == "off"
    assert settings.tf32 is True and settings.access_log is False
    with pytest.raises(SystemExit):
        _serve_args("--ort-spinning", "sometimes")
