"""``stlight export --device cuda`` on a host where ONNX Runtime cannot use CUDA (this one: the
GPU build of onnxruntime without the CUDA libraries or a GPU): one line with ONNX Runtime's
reason and exit 2, before exporting — never a "does NOT match" verdict on a file that was not
compared. Where CUDA does load, these checks are skipped (the GPU check covers that host)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from export import validation
from export.validation import ProviderUnavailable, check_provider
from service.cli.stlight import main


@pytest.fixture(scope="module")
def cuda_problem() -> str:
    try:
        check_provider("cuda")
    except ProviderUnavailable as exc:
        return str(exc)
    pytest.skip("ONNX Runtime runs on CUDA here; nothing fails to report")


def expect_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "does NOT match" not in captured.out + err and "FAILED" not in captured.out + err
    return err


def test_export_stops_before_exporting_with_onnx_runtimes_reason(
    cuda_problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.onnx"
    err = expect_one_line(capsys, ["export", "--preset", "tiny", "--out", str(out), "--device", "cuda"])
    assert "ONNX Runtime cannot use CUDAExecutionProvider: " in err and "Nothing was validated" in err
    reason = err.split("CUDAExecutionProvider: ", 1)[1].split(". Nothing was validated")[0]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert reason not in ("", "ONNX Runtime fell back to CPUExecutionProvider"), err  # its own words, e.g. a library
    assert not out.exists()


def test_validate_only_gives_no_verdict_on_an_uncompared_file(
    cuda_problem: str, tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = expect_one_line(
        capsys, ["export", "--preset", "tiny", "--out", str(tiny_onnx), "--validate-only", "--device", "cuda", "--json"]
    )
    assert err.endswith(cuda_problem)


def test_library_validate_raises_before_any_check(cuda_problem: str, tiny_onnx: Path) -> None:
    from export.onnx_export import random_model
    from model.config import preset

    with pytest.raises(ProviderUnavailable, match="Nothing was validated"):
        validation.validate(tiny_onnx, random_model(preset("tiny"), 0), preset("tiny"), provider="cuda")


def test_a_cpu_only_onnxruntime_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(validation, "_USABLE", set())
    with pytest.raises(ProviderUnavailable, match="this onnxruntime build has no CUDAExecutionProvider"):
        check_provider("cuda")
    check_provider("cpu")  # always there


def test_reason_is_read_from_onnx_runtimes_log() -> None:
    log = (
        "\x1b[1;31m2026-11-25 23:30:13.677 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] ... FAIL : "
        "Failed to load library .../libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared "
        "object file: No such file or directory\n\x1b[m\n\x1b[0;93m2026-11-25 [W:onnxruntime:Default, "
        "onnxruntime_pybind_state.cc:1295 CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. "
        "Require cuDNN 9.* and CUDA 13.*.\x1b[m\n"
    )
    assert validation._reason(log) == "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    warning_only = log.split("\n", 2)[2]
    assert validation._reason(warning_only).startswith("Failed to create CUDAExecutionProvider. Require cuDNN 9.*")
    assert validation._reason("") == ""
