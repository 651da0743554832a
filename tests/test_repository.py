"""The model repository in-process: which files become which models, names that must never become
paths, and what a bad file or folder is reported as (the served routes are in test_oip.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.core.assets import DEFAULT_MODEL
from service.core.errors import ServeError
from service.inference.engine import EngineError
from service.inference.metrics import ServiceMetrics
from service.inference.repository import Repository, find_versions, parse_model_spec, scan, valid_name
from service.server.problems import status_of
from service.server.settings import ServeSettings


def test_model_specs_and_settings() -> None:
    assert parse_model_spec("runs/a/best.onnx") == ("best", Path("runs/a/best.onnx"))
    assert parse_model_spec("mine=runs/a/best.onnx") == ("mine", Path("runs/a/best.onnx"))
    assert parse_model_spec("/tmp/k=v/m.onnx") == ("m", Path("/tmp/k=v/m.onnx"))  # '=' inside a path stays a path
    assert parse_model_spec("x=/tmp/a=b.onnx") == ("x", Path("/tmp/a=b.onnx"))
    assert parse_model_spec("builtin") == ("default", DEFAULT_MODEL)  # the shipped model, beside your own
    assert parse_model_spec("demo=builtin") == ("demo", DEFAULT_MODEL)
    assert parse_model_spec("./builtin") == ("builtin", Path("builtin"))  # a file of that name, said as a path
    for unnamed in ("/tmp/a=b.onnx", "/tmp/.hidden.onnx"):  # stems that are no name: name them
        with pytest.raises(EngineError, match="NAME="):
            parse_model_spec(unnamed)
    assert ServeSettings(model="a.onnx").model == ("a.onnx",)
    assert ServeSettings(model=Path("a.onnx")).model == ("a.onnx",)
    assert ServeSettings(model="x=/m/a.onnx:/m/b.onnx").model == ("x=/m/a.onnx", "/m/b.onnx")
    assert ServeSettings(model="").model == ()


@pytest.mark.parametrize("name", ["..", ".", "../etc", "a/b", "a\\b", "", ".hidden", "-x", "a b", "x" * 129, "caf\u00e9"])
def test_names_that_could_leave_the_folder_are_refused(name: str, tmp_path: Path) -> None:
    assert not valid_name(name)
    with pytest.raises(ServeError) as refused:
        find_versions(tmp_path, name)
    assert status_of(refused.value) == 400


def test_scan_reports_each_bad_entry_by_name(tmp_path: Path, tiny_onnx: Path) -> None:
    shutil.copy(tiny_onnx, tmp_path / "flat.onnx")
    for version in ("1", "2", "10"):
        (tmp_path / "triton" / version).mkdir(parents=True)
        shutil.copy(tiny_onnx, tmp_path / "triton" / version / "model.onnx")
    (tmp_path / "triton" / "config.pbtxt").write_text('name: "triton"')  # Triton's config beside: ignored
    (tmp_path / "triton" / "notes").mkdir()  # not a version
    (tmp_path / "both").mkdir()
    (tmp_path / "both.onnx").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "README.md").write_text("ignored")
    found = scan(tmp_path)
    assert found["flat"] == {"1": tmp_path / "flat.onnx"}
    assert found["triton"] == {v: tmp_path / "triton" / v / "model.onnx" for v in ("1", "2", "10")}
    assert "keep one of them" in str(found["both"]) and "holds no version" in str(found["empty"])
    assert set(found) == {"flat", "triton", "both", "empty"}
    with pytest.raises(ServeError) as missing:
        find_versions(tmp_path, "nope")
    assert status_of(missing.value) == 404 and "nope.onnx" in missing.value.detail


def test_a_repository_serves_what_loads_and_names_what_does_not(tmp_path: Path, tiny_onnx: Path) -> None:
    shutil.copy(tiny_onnx, tmp_path / "good.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    (tmp_path / "deep" / "7").mkdir(parents=True)
    shutil.copy(tiny_onnx, tmp_path / "deep" / "7" / "model.onnx")
    repository = Repository(ServeSettings(model_repository=tmp_path, device="cpu").model_options(), ServiceMetrics())
    assert sorted((s.name, s.version) for s in repository._pending) == [("deep", "7"), ("good", "1")]
    assert "cannot load" in repository.failed["bad"] and "bad.onnx" in repository.failed["bad"]
    assert repository.default == "deep"  # the first by name
    rows = {row["name"]: row for row in repository.index()}
    assert rows["bad"]["state"] == "UNAVAILABLE" and rows["good"]["state"] == "UNAVAILABLE"  # nothing started yet

    named = Repository(
        ServeSettings(model=f"mine={tiny_onnx}", model_repository=tmp_path, device="cpu").model_options(), ServiceMetrics()
    )
    assert named.default == "mine"  # a --model comes first
    with pytest.raises(EngineError, match="share a name"):
        Repository(
            ServeSettings(model=f"good={tiny_onnx}", model_repository=tmp_path, device="cpu").model_options(), ServiceMetrics()
        )
    with pytest.raises(EngineError, match="not a folder"):
        Repository(ServeSettings(model_repository=tmp_path / "good.onnx", device="cpu").model_options(), ServiceMetrics())
    with pytest.raises(EngineError, match="poll follows --model-repository"):  # nothing to poll
        Repository(ServeSettings(model_control="poll", device="cpu").model_options(), ServiceMetrics())
    with pytest.raises(EngineError, match="cannot load"):  # a --model file must load
        Repository(ServeSettings(model=str(tmp_path / "bad.onnx"), device="cpu").model_options(), ServiceMetrics())


def test_names_that_do_not_exist_leave_no_state(tmp_path: Path) -> None:
    """Load/unload of made-up names is refused and keeps nothing per name (no lock, no record)."""
    import asyncio

    settings = ServeSettings(model_repository=tmp_path, device="cpu", model_control="explicit")
    repository = Repository(settings.model_options(), ServiceMetrics())

    async def churn() -> int:
        refused = 0
        for index in range(500):
            for action in (repository.load, repository.unload):
                with pytest.raises(ServeError) as caught:
                    await action(f"ghost{index}")
                refused += status_of(caught.value) == 404
        return refused

    assert asyncio.run(churn()) == 1000
    assert repository._locks == {} and repository._lock_users == {}
    assert not repository.failed and not repository.unloaded and not repository.serving
