"""The packages import one way (export -> model -> service's torch-free contracts), checked in
fresh interpreters so that nothing another test imported can hide a dependency."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

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


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["model", "export"])
def test_training_code_imports_only_service_core(package: str) -> None:
    """The allow-list: ``model`` and ``export`` reach ``service`` only through ``service.core``
    (and the version), so the serving side can move anything else without breaking training."""
    wrong = {
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / package).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] == "service"
        and name not in ("service", "service.__version__", "service.core")
        and not name.startswith("service.core.")
    }
    assert not wrong


def test_the_allow_list_check_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from service.server.app import create_app\n    import service.inference.engine\n")
    assert {"service.server.app", "service.inference.engine"} <= _imports(sample)


@pytest.mark.parametrize(
    ("packages", "banned"),
    [
        (["service.core"], {"fastapi", "starlette", "onnxruntime", "torch"}),
        (["service.client", "service.batch"], {"fastapi", "starlette", "torch"}),
    ],
)
def test_light_layers_load_no_web_framework(packages: list[str], banned: set[str]) -> None:
    """service.core is what training imports; the clients and `stlight predict` run where no web
    server does. Every module of the folders is imported, not just the package's __init__."""
    chosen = [m for m in SERVING if any(m == p or m.startswith(p + ".") for p in packages)]
    assert len(chosen) > len(packages)
    loaded = loaded_after(chosen)
    assert set(chosen) <= loaded
    assert not banned & loaded


def _documented_modules() -> dict[str, set[str]]:
    """docs/development.md's layout table: folder -> the names in its modules column."""
    table: dict[str, set[str]] = {}
    for line in (REPO / "docs" / "development.md").read_text().splitlines():
        cells = line.split("|")
        folder = re.fullmatch(r"\s*`(service/\w+/)`\s*", cells[1]) if len(cells) > 3 else None
        if folder:
            table[folder.group(1)] = set(re.findall(r"`([\w/]+(?:\.py|/))`", cells[2]))
    return table


def test_development_docs_list_every_service_module() -> None:
    """The layout table in docs/development.md names each module of each service folder, no
    more and no fewer (a sub-folder such as ``proto/`` may be named as a whole)."""
    documented = _documented_modules()
    on_disk: dict[str, set[str]] = {}
    for path in (REPO / "service").rglob("*.py"):
        parts = path.relative_to(REPO / "service").parts
        if len(parts) < 2 or path.name in ("__init__.py", "__main__.py"):
            continue
        folder, rest = f"service/{parts[0]}/", parts[1:]
        name = "/".join(rest)
        if folder in documented and len(rest) > 1 and f"{rest[0]}/" in documented[folder]:
            name = f"{rest[0]}/"
        on_disk.setdefault(folder, set()).add(name)
    assert documented == on_disk


def test_no_function_is_over_80_lines() -> None:
    """Long functions hide what they do (docs/development.md's style): split them instead."""
    too_long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in ("model", "export", "service")
        for path in sorted((REPO / package).rglob("*.py"))
        if "proto" not in path.parts  # protoc's generated modules
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (node.end_lineno or 0) - node.lineno + 1 > 80
    ]
    assert not too_long
