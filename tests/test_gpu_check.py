"""benchmarks/gpu_check.py on a machine without a GPU: where CUDA is required it stops with the
reason (exit 2) and writes it down; ``--device cpu`` runs every phase that can run here (export,
validation, the engine on its CUDA code path with CPU buffers, a real ``stlight serve`` under
1 to 128 clients) and records the CUDA-only parts as skipped; the whole run's time box stops it
with what it has; the report judges the targets from a GPU run's numbers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from serving import REPO

from service.core.assets import DEFAULT_MODEL
from service.inference.engine import CUDA, Engine, EngineError

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _cuda_loads() -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    try:
        Engine(DEFAULT_MODEL, "cuda", 1, 1)
    except EngineError:
        return False
    return True


def test_it_stops_with_the_reason_where_cuda_does_not_load(tmp_path: Path) -> None:
    if _cuda_loads():
        pytest.skip("CUDA loads here: benchmarks/gpu_check.py would run the whole check")
    result = _check("--quick", "--out", str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "CUDA did not load" in result.stderr and "nothing was checked" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["phases"]["cuda"]["status"] == "failed" and "CUDA did not load" in report["phases"]["cuda"]["detail"]
    assert list(report["phases"]) == ["cuda"] and report["exit"] == 2
    assert "| cuda | failed |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_phase_that_can_run_here(tmp_path: Path) -> None:
    result = _check(
        "--quick", "--device", "cpu", "--preset", "tiny", "--max-batch-size", "4", "--cell-s", "0.2", "--load-s", "0.6",
        "--load-processes", "2",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    phases = {name: p["status"] for name, p in report["phases"].items()}
    assert phases == {"cuda": "skipped", "export": "passed", "engines": "passed", "serve": "passed"}, report["phases"]
    assert "--device cpu" in report["phases"]["cuda"]["detail"]
    assert [r["batch"] for r in report["engines"]] == [1, 2, 4]
    assert all(r["torch_ms"] > 0 and r["ort_ms"] > 0 and "graphs_ms" not in r for r in report["engines"])
    assert report["engines_skipped"] == {"graphs": "CUDA graphs need CUDA", "tf32": "TF32 is a CUDA setting"}
    served = report["served"]
    assert served["model"]["provider"] == "CPUExecutionProvider" and served["max_abs_error"] <= 1e-3
    assert [(r["clients"], r["processes"]) for r in served["load"]] == [(1, 1), (8, 1), (32, 2), (128, 2)]
    assert all(r["errors"] == 0 and r["clips_per_s"] > 0 and r["p50_ms"] > 0 for r in served["load"]), served["load"]
    assert all(t["met"] is None and "dry run" in t["note"] for t in report["targets"])
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| batch | torch CPU eager | ORT CPU (IO binding) |" in markdown and "| 128 | 2 |" in markdown
    log = (tmp_path / "serve.log").read_text()
    assert "CPUExecutionProvider" in log and "Traceback" not in log


def test_the_whole_runs_time_box_stops_it_with_what_it_has(tmp_path: Path) -> None:
    result = _check("--quick", "--device", "cpu", "--preset", "tiny", "--total-s", "2", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "time box (2 s) ran out" in result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stopped"] == "the whole run's time box (2 s) ran out" and report["phases"]["cuda"]["status"] == "skipped"
    assert "**Stopped early**" in (tmp_path / "gpu_check.md").read_text()


def _gpu_check():  # the script as a module, for its report functions
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def test_the_targets_are_judged_from_a_gpu_runs_numbers() -> None:
    check = _gpu_check()
    data = {
        "device": "cuda",
        "quick": True,
        "preset": "mmnist-s",
        "versions": {"gpu": "NVIDIA H200", "driver": "580.1", "cudnn": "91500"},
        "phases": {"cuda": {"status": "passed", "seconds": 4.0, "detail": "sessions run on CUDAExecutionProvider"}},
        "engines": [
            {"batch": 1, "torch_ms": 2.0, "ort_ms": 1.0, "graphs_ms": 0.5, "tf32_ms": 0.8},
            {"batch": 32, "torch_ms": 20.0, "ort_ms": 8.0, "graphs_ms": 7.5, "tf32_ms": 4.0},
        ],
        "served": {
            "model": {"provider": "CUDAExecutionProvider"},
            "max_abs_error": 2e-6,
            "load": [
                {"clients": 1, "processes": 1, "p50_ms": 1.5, "p99_ms": 3.0, "clips_per_s": 600.0, "errors": 0},
                {"clients": 128, "processes": 4, "p50_ms": 40.0, "p99_ms": 60.0, "clips_per_s": 3000.0, "errors": 0},
            ],
        },
    }
    targets = {t["target"]: t for t in check.targets(data, best_ort=4000.0)}
    assert targets["served clips/s at 128 clients"]["met"] is False
    assert targets["served at 128 clients / in-process ORT at its best batch size"] == {
        "target": "served at 128 clients / in-process ORT at its best batch size",
        "wanted": ">= 0.50",
        "measured": 0.75,
        "met": True,
        "note": "",
    }
    assert targets["1-client p50 ms"]["met"] is True and targets["CUDA graphs speed-up at batch 1"]["measured"] == 2.0
    data["targets"] = list(targets.values())
    markdown = check.render_markdown(data)
    assert "# gpu_check --quick: mmnist-s on NVIDIA H200" in markdown and "driver 580.1" in markdown
    assert "| 1 | 2.00 (500) | 1.00 (1,000) | 0.50 (2,000) | 0.80 (1,250) | 2.00x | 2.00x |" in markdown
    assert "| served clips/s at 128 clients | >= 5000 | 3000.0 | **no** |" in markdown
    assert "| 128 | 4 | 40.0 | 60.0 | 3,000 | 0 |" in markdown
