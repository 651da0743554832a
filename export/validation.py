"""Check an exported ONNX file against the torch model it came from.

Checks, each with its worst error and tolerance:
- ``onnx.checker`` with the full check (shape inference included), the model card, the signature;
- the whole model in ONNX Runtime against torch on random and structured (moving-blob) clips at
  batch 1 and 3;
- the ops that break exporters, one node at a time, as one-node ONNX models run in ONNX Runtime on
  random tensors of the model's real shapes: every ``DepthToSpace`` (mode CRD) against
  ``torch.nn.PixelShuffle`` and every dilated depthwise ``Conv`` (explicit pads, no ``auto_pad``,
  group = channels) against ``torch.nn.functional.conv2d`` with the weights from the file.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from model.config import STLightConfig
from service.core.card import ModelCard
from service.core.errors import extra_hint
from service.core.runtime import cuda_provider_options

# max abs error, whole model and per op: fp32 kernels agree to ~1e-6 here, a wrong op is off by far more
FP32_TOLERANCE = 1e-4
FP16_RELATIVE = 1e-2  # fp16: max abs error <= 1e-2 * max(1, max |torch output|)
BATCHES = (1, 3)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass
class Check:
    name: str
    passed: bool
    worst_error: float | None = None  # None: a structural check with no number
    tolerance: float | None = None
    detail: str = ""


@dataclass
class ValidationReport:
    onnx_path: str
    provider: str
    precision: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: non-finite errors become strings ("nan", "inf")."""
        checks = []
        for check in self.checks:
            row = asdict(check)
            for key in ("worst_error", "tolerance"):
                if row[key] is not None and not math.isfinite(row[key]):
                    row[key] = str(row[key])
            checks.append(row)
        return {
            "passed": self.passed,
            "onnx_path": self.onnx_path,
            "provider": self.provider,
            "precision": self.precision,
            "checks": checks,
        }

    def table(self) -> str:
        """The human report: one row per check, then what failed and why."""
        width = max([len("check"), *(len(c.name) for c in self.checks)])
        num = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        lines = [f"{'check':<{width}}  {'worst error':>11}  {'tolerance':>9}  pass", "-" * (width + 32)]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {num(c.worst_error):>11}  {num(c.tolerance):>9}  {'ok' if c.passed else 'FAIL'}")
        lines.append("")
        if self.passed:
            lines.append(f"PASSED: {len(self.checks)} checks on {self.provider} ({self.precision}) for {self.onnx_path}")
        else:
            lines.append(
                f"FAILED: {len(self.failed)} of {len(self.checks)} checks on {self.provider} ({self.precision}) for "
                f"{self.onnx_path}"
            )
            lines += [f"  - {c.name}: {c.detail or 'error above tolerance'}" for c in self.failed]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def random_clips(batch: int, config: STLightConfig, seed: int) -> np.ndarray:
    """Uniform noise in [0, 1], (B, T, C, H, W) float32."""
    return np.random.default_rng(seed).random((batch, *config.input_shape), dtype=np.float32)


def moving_blobs(batch: int, config: STLightConfig, seed: int) -> np.ndarray:
    """Structured clips: 1-3 Gaussian blobs per clip moving in straight lines, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    t, c, h, w = config.input_shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) pixel grid
    clips = np.zeros((batch, t, c, h, w), dtype=np.float32)
    for b in range(batch):
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
            vy, vx = rng.uniform(-0.05, 0.05, size=2) * (h, w)  # pixels per frame
            sigma = rng.uniform(0.04, 0.12) * min(h, w)
            amplitude = rng.uniform(0.5, 1.0, size=c).astype(np.float32)
            for f in range(t):
                blob = np.exp(-((ys - y0 - vy * f) ** 2 + (xs - x0 - vx * f) ** 2) / (2 * sigma**2))  # (H, W)
                clips[b, f] = np.maximum(clips[b, f], amplitude[:, None, None] * blob)
    return clips


# ---------------------------------------------------------------------------------------
# the provider, checked once before any check
# ---------------------------------------------------------------------------------------


_USABLE: set[str] = set()  # providers already seen working in this process


class ProviderUnavailable(RuntimeError):
    """ONNX Runtime cannot run on the asked provider; nothing was compared. The message is one line
    with ONNX Runtime's own reason."""


def _probe_model() -> bytes:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=min(onnx.IR_VERSION, 10))
    return model.SerializeToString()


def _reason(log: str) -> str:
    """The line of ONNX Runtime's log that says why CUDA did not load: the library that failed
    ("libcublasLt.so.13: cannot open shared object file"), else its "Failed to create" warning."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)  # its terminal colours
    found = re.search(r"with error: (.+)", text)
    if found:
        return found.group(1).strip()
    for line in text.splitlines():
        if "CUDAExecutionProvider" in line or "CUDA failure" in line or "cuda" in line.lower():
            return line.split("] ", 1)[-1].strip()
    return ""


def check_provider(provider: str) -> None:
    """Raise :class:`ProviderUnavailable` unless ONNX Runtime really runs on ``provider``.

    For CUDA: load the ``cuda`` extra's libraries first, as the serving engine does (otherwise
    CUDA works here only when a CUDA torch happened to load them), then open a one-node session
    and read back the provider it got; ONNX Runtime's reason for a fallback goes only to its log
    on stderr, so that is captured for the message."""
    if provider != "cuda" or provider in _USABLE:
        return
    import onnxruntime as ort

    from service.core.runtime import preload_cuda_libraries

    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise ProviderUnavailable(
            f"--device cuda: this onnxruntime build has no {name} (available: {', '.join(ort.get_available_providers())}); "
            "install onnxruntime-gpu, or validate with --device cpu"
        )
    preloaded = preload_cuda_libraries()  # lines for each library it could not load
    options = ort.SessionOptions()
    options.log_severity_level = 4
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)  # ONNX Runtime's C++ logger writes to the process's stderr
        try:
            ort.set_default_logger_severity(2)
            session = ort.InferenceSession(_probe_model(), options, providers=[(name, cuda_provider_options())])
            got, error = session.get_providers()[0], ""
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            got, error = "", f"{type(exc).__name__}: {exc}"
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        captured = log.read().decode(errors="replace")
    if got == name:
        _USABLE.add(provider)
        return
    reason = error or _reason(captured) or "; ".join(preloaded) or f"ONNX Runtime fell back to {got or 'nothing'}"
    raise ProviderUnavailable(
        f"--device cuda: ONNX Runtime cannot use {name}: {' '.join(reason.split())}. Nothing was validated; "
        f"install the CUDA libraries ({extra_hint('cuda')}) and an NVIDIA driver, or validate with --device cpu"
    )


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto | bytes, provider: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions and land in the report
    name = PROVIDERS[provider]
    # the options `stlight serve` runs with (TF32 off among them): the file validated is the file served
    providers: list[Any] = [(name, cuda_provider_options()) if provider == "cuda" else name]
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, options, providers=providers)
    if session.get_providers()[0] != name:
        raise RuntimeError(f"ONNX Runtime could not use {name} (available: {', '.join(ort.get_available_providers())})")
    return session


def _run(session: Any, output: str | None, feed: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    return session.run(None if output is None else [output], feed, quiet)[0]


def _tolerance(reference: np.ndarray, precision: str) -> float:
    if precision == "fp16":
        return FP16_RELATIVE * max(1.0, float(np.abs(reference).max()))
    return FP32_TOLERANCE


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} from ONNX Runtime, torch gives {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[list[Any], int]]:
    """Tensor name -> (dims, elem_type) from ONNX shape inference; symbolic dims stay strings."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        out[vi.name] = ([d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim], t.elem_type)
    return out


def _real_shape(
    name: str, shapes: dict[str, tuple[list[Any], int]], fallback: tuple[int, ...], batch: int = 2
) -> tuple[list[int], int]:
    dims, elem = shapes.get(name, ([], onnx.TensorProto.FLOAT))
    if len(dims) != len(fallback) + 1 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return [batch, *fallback], elem or onnx.TensorProto.FLOAT
    return [batch, *dims[1:]], elem


def _one_node_model(
    node: onnx.NodeProto, x_shape: list[int], elem: int, initializers: list[onnx.TensorProto], opset: int
) -> onnx.ModelProto:
    """The node alone: input ``x``, output ``y``, its weights as initializers, its attributes as in the file."""
    single = helper.make_node(node.op_type, ["x", *node.input[1:]], ["y"], name=node.name or node.op_type)
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single],
        f"one_{node.op_type}",
        [helper.make_tensor_value_info("x", elem, x_shape)],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=min(onnx.IR_VERSION, 10))


def _np_dtype(elem: int) -> Any:
    return np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32


def _is_dilated(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and any(d != 1 for d in _attrs(node).get("dilations", []))


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------


def _check_depth_to_space(
    node: onnx.NodeProto, index: int, shapes: dict, config: STLightConfig, opset: int, provider: str, seed: int
) -> Check:
    name = f"DepthToSpace #{index} (CRD) vs PixelShuffle"
    attrs = _attrs(node)
    mode, block = attrs.get("mode", "DCR"), int(attrs.get("blocksize", 0))
    problems = [] if mode == "CRD" else [f"mode {mode}, PixelShuffle needs CRD"]
    latent = (config.dim, config.latent_size(config.height), config.latent_size(config.width))
    x_shape, elem = _real_shape(node.input[0], shapes, latent)
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(_np_dtype(elem))
    try:
        y = _run(_session(_one_node_model(node, x_shape, elem, [], opset), provider), None, {"x": x})
        ref = nn.PixelShuffle(block)(torch.from_numpy(x.astype(np.float32))).numpy()
        err = _max_abs(y, ref)
    except Exception as exc:
        return Check(name, False, math.inf, 0.0, "; ".join([*problems, f"{type(exc).__name__}: {exc}"]))
    if err > 0.0:
        problems.append(f"differs from PixelShuffle({block}) on {x_shape}")
    return Check(name, not problems, err, 0.0, "; ".join(problems) or f"blocksize {block} on {x_shape}")


def _check_dilated_conv(
    node: onnx.NodeProto,
    index: int,
    shapes: dict,
    inits: dict[str, onnx.TensorProto],
    config: STLightConfig,
    dilation: int,
    opset: int,
    provider: str,
    precision: str,
    seed: int,
) -> Check:
    name = f"dilated depthwise Conv #{index} vs F.conv2d"
    attrs = _attrs(node)
    problems = []
    if node.input[1] not in inits:
        return Check(name, False, None, None, f"weight {node.input[1]!r} is not an initializer")
    weight = numpy_helper.to_array(inits[node.input[1]])  # (C, 1, k, k)
    bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
    channels, k = weight.shape[0], weight.shape[-1]
    expected_pad = dilation * (k - 1) // 2  # "same" with stride 1 and odd k
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        problems.append(f"auto_pad={attrs['auto_pad']} (needs explicit pads)")
    if list(attrs.get("pads", [])) != [expected_pad] * 4:
        problems.append(f"pads {list(attrs.get('pads', []))}, expected {[expected_pad] * 4}")
    if list(attrs.get("dilations", [])) != [dilation, dilation]:
        problems.append(f"dilations {list(attrs.get('dilations', []))}, the torch model uses {dilation}")
    if int(attrs.get("group", 1)) != channels or weight.shape[1] != 1:
        problems.append(f"group {attrs.get('group', 1)} with weight {weight.shape}, expected group = channels = {channels}")
    latent = (channels, config.latent_size(config.height), config.latent_size(config.width))
    x_shape, elem = _real_shape(node.input[0], shapes, latent)
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(_np_dtype(elem))
    used = [inits[n] for n in node.input[1:] if n in inits]
    try:
        y = _run(_session(_one_node_model(node, x_shape, elem, used, opset), provider), None, {"x": x})
        with torch.no_grad():
            ref = F.conv2d(
                torch.from_numpy(x.astype(np.float32)),
                torch.from_numpy(weight.astype(np.float32)),
                None if bias is None else torch.from_numpy(bias.astype(np.float32)),
                padding="same",
                dilation=dilation,
                groups=channels,
            ).numpy()
        err, tol = _max_abs(y, ref), _tolerance(ref, precision)
    except Exception as exc:
        return Check(name, False, math.inf, None, "; ".join([*problems, f"{type(exc).__name__}: {exc}"]))
    if not err <= tol:
        problems.append(f"max abs error {err:.3g} > {tol:.3g} on {x_shape}")
    return Check(name, not problems, err, tol, "; ".join(problems) or f"k{k} d{dilation} pads {expected_pad} on {x_shape}")


def _torch_ops(net: nn.Module) -> tuple[int, int, int]:
    """(PixelShuffle modules with factor > 1, dilated depthwise convs, their dilation) in the torch model."""
    shuffles = sum(1 for m in net.modules() if isinstance(m, nn.PixelShuffle) and m.upscale_factor > 1)
    dilated = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and max(m.dilation) > 1]
    return shuffles, len(dilated), (dilated[0].dilation[0] if dilated else 1)


class _WholeModel:
    """Model-vs-torch checks on whole clips. The ONNX Runtime session is made by the first check
    that needs it, so a failure to create it is that check's reason, not an exception."""

    def __init__(
        self, model: onnx.ModelProto, net: nn.Module, config: STLightConfig, provider: str, precision: str, seed: int
    ) -> None:
        self.model, self.net, self.config, self.provider = model, net, config, provider
        self.precision, self.seed = precision, seed
        self.session: Any = None

    def check(self, kind: str, batch: int) -> Check:
        name = f"model vs torch, {kind} clips, batch {batch}"
        make = random_clips if kind == "random" else moving_blobs
        clips = make(batch, self.config, self.seed + batch)
        try:
            if self.session is None:
                self.session = _session(self.model, self.provider)
            y = _run(self.session, "predicted", {"frames": clips})
            with torch.no_grad():
                ref = self.net(torch.from_numpy(clips)).numpy()
            err, tol = _max_abs(y, ref), _tolerance(ref, self.precision)
        except Exception as exc:
            return Check(name, False, math.inf, None, f"{type(exc).__name__}: {exc}")
        return Check(name, err <= tol, err, tol, "" if err <= tol else f"max abs error {err:.3g} > {tol:.3g}")


def validate(
    onnx_path: str | Path,
    net: nn.Module,
    config: STLightConfig,
    *,
    batches: Sequence[int] = BATCHES,
    seed: int = 0,
    provider: str = "cpu",
    progress: bool = False,
) -> ValidationReport:
    """Run every check on ``onnx_path`` against ``net`` (fp32 torch, eval mode); never raises for a
    bad file — each failure is a failed check with a reason. ``provider``: "cpu" or "cuda"; one
    ONNX Runtime cannot use raises :class:`ProviderUnavailable` before any check runs."""
    from tqdm import tqdm

    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f"ONNX file {onnx_path} does not exist")
    check_provider(provider)
    net = net.cpu().eval()
    report = ValidationReport(str(onnx_path), PROVIDERS[provider], "fp32")
    try:
        model = onnx.load(onnx_path)
    except Exception as exc:
        report.checks.append(Check("load ONNX file", False, detail=f"{type(exc).__name__}: {exc}"))
        return report
    inits = {t.name: t for t in model.graph.initializer}
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits.values()):
        report.precision = "fp16"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    shapes = _shapes(model)
    shuffles, n_dilated, dilation = _torch_ops(net)
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace" and int(_attrs(n).get("blocksize", 0)) != 1]
    convs = [n for n in model.graph.node if _is_dilated(n)]

    steps: list[tuple[str, Callable[[], Check]]] = [
        ("checker", lambda: _check_checker(onnx_path)),
        ("card", lambda: _check_card(model, config, report.precision)),
        ("signature", lambda: _check_signature(model, config)),
        ("op count", lambda: _check_counts(len(d2s), shuffles, len(convs), n_dilated)),
    ]
    whole = _WholeModel(model, net, config, provider, report.precision, seed)
    for kind in ("random", "blobs"):
        for batch in batches:
            steps.append((f"{kind} b{batch}", functools.partial(whole.check, kind, batch)))
    for i, node in enumerate(d2s):
        steps.append(
            (
                f"DepthToSpace #{i}",
                functools.partial(_check_depth_to_space, node, i, shapes, config, opset, provider, seed + i),
            )
        )
    for i, node in enumerate(convs):
        steps.append(
            (
                f"dilated Conv #{i}",
                functools.partial(
                    _check_dilated_conv, node, i, shapes, inits, config, dilation, opset, provider, report.precision, seed + i
                ),
            )
        )

    with tqdm(steps, desc="validating", unit="check", file=sys.stderr, disable=not progress, leave=False) as bar:
        for label, run in bar:
            bar.set_postfix_str(label)
            report.checks.append(run())
    return report


def _check_checker(path: Path) -> Check:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        return Check("onnx.checker (full_check)", False, detail=f"{type(exc).__name__}: {exc}".splitlines()[0])
    return Check("onnx.checker (full_check)", True)


def _check_card(model: onnx.ModelProto, config: STLightConfig, precision: str) -> Check:
    name = "model card in metadata_props"
    try:
        card = ModelCard.from_metadata({p.key: p.value for p in model.metadata_props})
    except ValueError as exc:
        return Check(name, False, detail=str(exc))
    problems = []
    if card.config != config.to_dict():
        problems.append(f"card config {card.config} differs from the model's {config.to_dict()}")
    if card.precision != precision:
        problems.append(f"card says {card.precision}, weights are {precision}")
    return Check(name, not problems, detail="; ".join(problems))


def _check_signature(model: onnx.ModelProto, config: STLightConfig) -> Check:
    name = "signature frames -> predicted, dynamic batch"
    problems = []
    expected = {"frames": (model.graph.input, config.input_shape), "predicted": (model.graph.output, config.output_shape)}
    for tensor, (values, dims) in expected.items():
        found = [v for v in values if v.name == tensor]
        if not found:
            problems.append(f"no {tensor!r} (has {', '.join(v.name for v in values) or 'none'})")
            continue
        t = found[0].type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        if t.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"{tensor} is {onnx.TensorProto.DataType.Name(t.elem_type)}, expected FLOAT")
        if len(shape) != 5 or shape[1:] != list(dims) or isinstance(shape[0], int):
            problems.append(f"{tensor} shape {shape}, expected [batch, {', '.join(map(str, dims))}] with a symbolic batch")
    return Check(name, not problems, detail="; ".join(problems))


def _check_counts(n_d2s: int, shuffles: int, n_conv: int, dilated: int) -> Check:
    problems = []
    if n_d2s != shuffles:
        problems.append(f"{n_d2s} DepthToSpace nodes, the torch model has {shuffles} PixelShuffle")
    if n_conv != dilated:
        problems.append(f"{n_conv} dilated Conv nodes, the torch model has {dilated} dilated depthwise convs")
    return Check("op count (DepthToSpace, dilated Conv)", not problems, detail="; ".join(problems))
