"""The packages import one way (export -> model -> service's torch-free contracts), checked in
fresh interpreters so that nothing another test imported can hide a dependency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from serving import REPO


def modules(package: str) -> list[str]:
    """Every module of a package, found on disk so that new modules are checked too."""
    root = REPO / package
    paths = [path for path in root.rglob("*.py") if path.name != "__main__.py"]  # importing one runs it
    return sorted(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for path in paths)


TRAINING = modules("model")
SERVING = modules("service")


def loaded_after(modules: list[str]) -> set[str]:
    """Top-level names of every module loaded by importing ``modules`` in a new interpreter."""
    code = (
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    return set(json.loads(out.stdout))


def test_training_imports_neither_onnxruntime_nor_fastapi() -> None:
    loaded = loaded_after(TRAINING)
    assert "torch" in loaded  # the check below means something only if the training code really loaded
    assert not {"onnxruntime", "fastapi", "starlette", "uvicorn", "service.inference.engine", "service.server.app"} & loaded


def test_serving_imports_neither_torch_nor_model_nor_export() -> None:
    loaded = loaded_after(SERVING)
    assert "onnxruntime" in loaded and "fastapi" in loaded
    assert not {m for m in loaded if m.split(".")[0] in {"torch", "model", "export"}}


@pytest.mark.parametrize(("module", "other"), [("model.cli", "service.cli"), ("service.cli", "model.cli")])
def test_the_command_modules_do_not_import_each_other(module: str, other: str) -> None:
    assert other not in loaded_after([module])
