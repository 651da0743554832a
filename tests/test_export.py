"""ONNX export: round trips validated against torch, corrupted files caught, model card, fp16, CLI.

Expensive exports are module-scoped; ``tiny_onnx`` (tests/conftest.py) is shared with the service tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from serving import REPO

from export import Check, ValidationReport, export_preset, random_model, validate
from export.validation import FP16_RELATIVE, FP32_TOLERANCE, moving_blobs
from model import preset, save_checkpoint
from service import __version__
from service.cli.stlight import main
from service.core.card import ModelCard
from service.core.hashing import file_sha256

MID = preset("tiny").replace(dim=128, depth=4, patch_size=2, out_frames=20)  # mid-size, 10 -> 20 frames


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dilated_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Conv" and list(_attrs(n).get("dilations", [1, 1])) != [1, 1]]


def _metadata(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    return random_model(preset("tiny"), 0)


@pytest.fixture(scope="module")
def tiny_report(tiny_onnx: Path, tiny_net: torch.nn.Module) -> ValidationReport:
    return validate(tiny_onnx, tiny_net, preset("tiny"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as training writes it: mid-size 10 -> 20 config, preset, dataset, best metrics."""
    net = random_model(MID, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return save_checkpoint(
        path, net, MID, preset="kth-xs", dataset="kth", best_metrics={"mse": torch.tensor(31.5), "ssim": 0.87}, step=100
    )


@pytest.fixture(scope="module")
def checkpoint_export(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    """``stlight export CKPT --json`` run in-process: (exit status, parsed JSON, onnx path)."""
    out = tmp_path_factory.mktemp("ckpt_onnx") / "mid.onnx"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(["export", str(checkpoint), "--out", str(out), "--json"])
    return rc, json.loads(buffer.getvalue()), out


@pytest.fixture(scope="module")
def fp16_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_preset("tiny", tmp_path_factory.mktemp("fp16") / "tiny-fp16.onnx", seed=0, fp16=True)


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------


def test_tiny_round_trip_passes_every_check(tiny_report: ValidationReport) -> None:
    assert tiny_report.passed, tiny_report.table()
    names = [c.name for c in tiny_report.checks]
    assert sum(n.startswith("model vs torch") for n in names) == 4  # random + blobs, batch 1 and 3
    assert sum(n.startswith("DepthToSpace") for n in names) == 1
    assert sum(n.startswith("dilated depthwise Conv") for n in names) == preset("tiny").depth
    for check in tiny_report.checks:
        if check.name.startswith("model vs torch"):
            assert check.tolerance == FP32_TOLERANCE and check.worst_error <= 1e-4


def test_tiny_file_is_self_contained_with_dynamic_batch(tiny_onnx: Path, tiny_net: torch.nn.Module) -> None:
    assert sorted(p.name for p in tiny_onnx.parent.iterdir()) == ["tiny.onnx"]  # no external data file
    model = onnx.load(tiny_onnx, load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["frames"] and [o.name for o in model.graph.output] == ["predicted"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    (d2s,) = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert _attrs(d2s)["mode"] == b"CRD"
    for conv in _dilated_convs(model):
        assert _attrs(conv).get("auto_pad", b"NOTSET") == b"NOTSET" and list(_attrs(conv)["pads"]) == [9, 9, 9, 9]
    # a batch size validate() did not use, on real-looking clips
    clips = moving_blobs(5, preset("tiny"), seed=11)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"frames": clips})
    with torch.no_grad():
        want = tiny_net(torch.from_numpy(clips)).numpy()
    assert got.shape == (5, 10, 1, 64, 64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_mid_size_10_to_20_checkpoint_round_trip(checkpoint_export: tuple[int, dict, Path]) -> None:
    rc, report, out = checkpoint_export
    failed = [c for c in report["checks"] if not c["passed"]]
    assert rc == 0 and report["passed"] is True, failed
    assert sum(c["name"].startswith("dilated depthwise Conv") for c in report["checks"]) == MID.depth
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"frames": np.random.default_rng(0).random((2, 10, 1, 64, 64), dtype=np.float32)})
    assert got.shape == (2, 20, 1, 64, 64) and np.isfinite(got).all()


def test_validator_catches_weights_from_another_model(tiny_onnx: Path) -> None:
    report = validate(tiny_onnx, random_model(preset("tiny"), 1), preset("tiny"), batches=(1,))
    assert not report.passed
    failed = {c.name for c in report.failed}
    assert failed == {"model vs torch, random clips, batch 1", "model vs torch, blobs clips, batch 1"}


# ---------------------------------------------------------------------------------------
# corrupted files: the validator and the CLI both refuse them
# ---------------------------------------------------------------------------------------


def _corrupt(src: Path, dst: Path, how: str) -> Path:
    model = onnx.load(src)
    if how == "depth_to_space_dcr":
        (node,) = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
        next(a for a in node.attribute if a.name == "mode").s = b"DCR"
    elif how == "dilated_conv_wrong_pads":  # same output size, content shifted by 3 pixels
        pads = next(a for a in _dilated_convs(model)[1].attribute if a.name == "pads")
        del pads.ints[:]
        pads.ints.extend([6, 6, 12, 12])
    elif how == "dilated_conv_auto_pad":  # what the legacy exporter writes
        node = _dilated_convs(model)[2]
        kept = [a for a in node.attribute if a.name not in ("pads", "auto_pad")]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("auto_pad", "SAME_UPPER")])
    onnx.save(model, dst)
    return dst


@pytest.mark.parametrize(
    ("how", "bad_op", "detail"),
    [
        ("depth_to_space_dcr", "DepthToSpace #0", "mode DCR"),
        ("dilated_conv_wrong_pads", "dilated depthwise Conv #1", "pads [6, 6, 12, 12], expected [9, 9, 9, 9]"),
        ("dilated_conv_auto_pad", "dilated depthwise Conv #2", "auto_pad=SAME_UPPER"),
    ],
)
def test_corrupted_file_is_caught(
    tiny_onnx: Path, tiny_net: torch.nn.Module, tmp_path: Path, capsys, how: str, bad_op: str, detail: str
) -> None:
    bad = _corrupt(tiny_onnx, tmp_path / f"{how}.onnx", how)
    report = validate(bad, tiny_net, preset("tiny"), batches=(1,))
    assert not report.passed
    failed = {c.name: c for c in report.failed}
    (op_check,) = [c for name, c in failed.items() if name.startswith(bad_op)]
    assert detail in op_check.detail
    assert "model vs torch, random clips, batch 1" in failed  # the whole model disagrees too
    # the other op checks still pass: the validator points at the broken node
    assert all(
        c.passed for c in report.checks if c.name.startswith(("DepthToSpace", "dilated")) and not c.name.startswith(bad_op)
    )

    rc = main(["export", "--preset", "tiny", "--seed", "0", "--out", str(bad), "--validate-only"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "FAILED" in out and bad_op in out and detail in out
    assert "does NOT match the torch model" in err and "Traceback" not in err


def test_cli_json_reports_failure(tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    bad = _corrupt(tiny_onnx, tmp_path / "dcr.onnx", "depth_to_space_dcr")
    rc = main(["export", "--preset", "tiny", "--out", str(bad), "--validate-only", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["passed"] is False
    assert any(c["name"].startswith("DepthToSpace") and not c["passed"] for c in report["checks"])
    json.dumps(report, allow_nan=False)  # strict JSON: non-finite errors are strings


# ---------------------------------------------------------------------------------------
# model card
# ---------------------------------------------------------------------------------------


def test_metadata_round_trips_through_model_card(checkpoint: Path, checkpoint_export: tuple[int, dict, Path]) -> None:
    _, report, out = checkpoint_export
    card = ModelCard.from_metadata(_metadata(out))
    assert card == ModelCard.from_config(
        MID.to_dict(),
        preset="kth-xs",
        dataset="kth",
        metrics={"mse": 31.5, "ssim": 0.87},
        checkpoint_sha256=file_sha256(checkpoint),
        version=__version__,
        precision="fp32",
    )
    assert (card.out_frames, card.value_range) == (20, (0.0, 1.0))
    assert report["card"] == card.to_dict()


def test_preset_card_names_the_preset(tiny_onnx: Path) -> None:
    card = ModelCard.from_metadata(_metadata(tiny_onnx))
    assert card.preset == "tiny" and card.config == preset("tiny").to_dict()
    assert card.dataset == "" and card.checkpoint_sha256 == "" and card.metrics == {}


# ---------------------------------------------------------------------------------------
# fp16
# ---------------------------------------------------------------------------------------


def test_fp16_half_weights_float_io_within_its_tolerance(fp16_onnx: Path, tiny_onnx: Path, tiny_net: torch.nn.Module) -> None:
    model = onnx.load(fp16_onnx)
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16_onnx.stat().st_size < 0.6 * tiny_onnx.stat().st_size
    assert ModelCard.from_metadata(_metadata(fp16_onnx)).precision == "fp16"

    report = validate(fp16_onnx, tiny_net, preset("tiny"))
    assert report.passed and report.precision == "fp16", report.table()
    whole = [c for c in report.checks if c.name.startswith("model vs torch")]
    assert all(c.tolerance >= FP16_RELATIVE and 0 < c.worst_error <= c.tolerance for c in whole)
    # half precision is really used: fp32 files differ from torch by ~5e-7, fp16 by ~5e-4
    assert max(c.worst_error for c in whole) > 1e-5


# ---------------------------------------------------------------------------------------
# CLI mistakes and imports
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{tmp}/nope.pt", "--out", "{tmp}/m.onnx"], "does not exist"),
        (["export", "{tmp}/nope.pt", "--preset", "tiny", "--out", "{tmp}/m.onnx"], "not both"),
        (["export", "--out", "{tmp}/m.onnx"], "give a checkpoint file"),
        (["export", "{tmp}/junk.pt", "--out", "{tmp}/m.onnx"], "not a readable STLight checkpoint"),
        (["export", "{tmp}/junk.pt", "--dim", "64", "--out", "{tmp}/m.onnx"], "only applies to --preset"),
        (["export", "--preset", "tiny", "--out", "{tmp}"], "is a directory"),
        (["export", "--preset", "tiny", "--out", "{tmp}/m.onnx", "--validate-only"], "does not exist; export it first"),
        (["export", "--preset", "tiny", "--out", "{tmp}/m.onnx", "--opset", "13"], "use 18 or newer"),
        (["export", "--preset", "tiny", "--dim", "100", "--out", "{tmp}/m.onnx"], "divisible by patch_size**2"),
    ],
)
def test_cli_mistakes_give_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("stlight export: error:") and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_entry_point_missing_checkpoint_and_no_torch_at_import(tmp_path: Path) -> None:
    proc = subprocess.run(
        [shutil.which("stlight") or "stlight", "export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    code = (
        "import sys, export, export.cli; from service.cli.stlight import build_parser\n"
        "build_parser(); assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def test_report_table_and_dict_are_readable() -> None:
    report = ValidationReport(
        "m.onnx", "CPUExecutionProvider", "fp32", [Check("a", True, 1e-7, 1e-4), Check("b", False, float("nan"), 1e-4, "NaN out")]
    )
    assert not report.passed and report.to_dict()["checks"][1]["worst_error"] == "nan"
    table = report.table()
    assert "FAILED: 1 of 2 checks" in table and "b: NaN out" in table
    assert not ValidationReport("m.onnx", "cpu", "fp32").passed  # no checks is not a pass
