"""Run planning for ``stlight train``: from what the user asked for (:class:`TrainRequest`) to
everything :func:`model.train.train` needs — settings, config, data spec and datasets — with
the dataset's defaults (the paper's Table 2) filled in, the config fitted to the data where the
user left it open, and a resumed run held to the settings stored in its checkpoint.

User mistakes raise :class:`~service.core.errors.UserError`; bad data raises
:class:`~model.data.DataError` from the data module."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from model.config import STLightConfig, configure, preset
from model.data import DataSpec, build_datasets, clip_count, data_shape
from model.train import DEFAULT_PRESET, TABLE2, RunSettings, load_resume
from service.core.errors import UserError

# RunSettings fields a user may set; --resume takes them from the checkpoint and refuses other values
RUN_FIELDS = (
    "lr",
    "schedule",
    "final_div_factor",
    "batch_size",
    "seed",
    "clips_per_epoch",
    "val_clips",
    "val_fraction",
    "clips_on_device",
)
# DataSpec fields of the same kind (the clips a run trains on); paths may change on --resume
DATA_FIELDS = ("stride", "resize", "held_out_digits")


def scaled_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """The learning rate for ``global_batch`` clips per step when ``base_lr`` suits ``base_batch``:
    the square-root rule for Adam (Malladi et al., NeurIPS 2022: the gradient noise falls as
    1/sqrt(batch), so the step grows as sqrt(batch)). Table 2's batch keeps Table 2's lr."""
    return base_lr * math.sqrt(global_batch / base_batch)


def flag(name: str) -> str:
    """The command-line flag of a request field, for messages."""
    return "--" + name.replace("_", "-")


def clash(name: str, value: Any, was: Any) -> str:
    """A flag that differs from the run, as the user typed it: ``--lr 0.1 (run: 0.003)``,
    ``--no-clips-on-device (run: --clips-on-device)``."""
    if isinstance(value, bool):
        on, off = flag(name), "--no-" + flag(name)[2:]
        return f"{on if value else off} (run: {on if was else off})"
    return f"{flag(name)} {value} (run: {was})"


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for. ``None``: the dataset's default (``mmnist`` for the dataset), or with
    ``resume`` the run's own value."""

    out: Path
    resume: bool = False
    trust_checkpoint: bool = False  # unpickle last.pt fully (it may run code): --trust-checkpoint
    dataset: str | None = None
    preset: str | None = None
    overrides: dict[str, int] = field(default_factory=dict)  # STLightConfig fields the user set
    data_dir: str | None = None
    data_path: str | None = None
    val_path: str | None = None
    val_fraction: float | None = None
    val_clips: int | None = None
    clips_per_epoch: int | None = None
    seed: int | None = None
    lr: float | None = None
    schedule: str | None = None
    final_div_factor: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    stride: int | None = None  # videos: frames between window starts
    resize: str | None = None  # videos: none, fit or crop
    held_out_digits: int | None = None  # mmnist: digits kept for test clips only
    clips_on_device: bool | None = None  # None: on for mmnist on CUDA
    processes: int = 1  # this launch's process count (torchrun's WORLD_SIZE); --batch-size is per process
    device: str = "cpu"  # where the run trains ("cpu" or "cuda", resolved): chooses clips_on_device's default


@dataclass
class Plan:
    settings: RunSettings
    config: STLightConfig
    spec: DataSpec
    datasets: tuple[Dataset, Dataset]
    resume: dict[str, Any] | None = None  # the checkpoint payload a resumed run continues from
    fitted: str = ""  # what was taken from the data, for the user to read ("" when nothing)
    lr_rule: str = ""  # how the default lr follows the batch size ("" when Table 2's applies unchanged)


def plan_run(request: TrainRequest) -> Plan:
    out = request.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; give a run folder (created if missing)")
    if request.resume:
        if not (out / "last.pt").is_file():
            raise UserError(f"--resume: {out / 'last.pt'} does not exist; start the run without --resume first")
        try:
            payload = load_resume(out, trust=request.trust_checkpoint)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        settings, config, spec = _resumed(request, payload)
        if settings.world_size != request.processes:
            raise UserError(
                f"--resume: the run in {out} trained in {settings.world_size} process(es) × batch {settings.batch_size}, "
                f"this launch has {request.processes}; start it with {settings.world_size} process(es) in all "
                "so the batches stay the same"
            )
        return Plan(settings, config, spec, build_datasets(spec, config), resume=payload)
    if (out / "last.pt").exists():
        raise UserError(f"{out} already holds a run (last.pt); add --resume to continue it, or choose another --out")
    return _new_run(request)


def _data_spec(request: TrainRequest, saved: dict[str, Any] | None = None) -> DataSpec:
    """The request's data; a resumed run keeps its saved spec and takes only new paths (data may move)."""
    base = dict(saved or {"name": request.dataset or "mmnist"})
    for key in ("data_dir", "data_path", "val_path"):
        value = getattr(request, key)
        if value is not None:
            base[key] = str(Path(value).resolve())
    if saved is None:
        for key in ("val_fraction", "seed", "clips_per_epoch", "val_clips", "stride", "resize", "held_out_digits"):
            if getattr(request, key) is not None:
                base[key] = getattr(request, key)
    return DataSpec(**base)


def _config(name: str, overrides: dict[str, int]) -> STLightConfig:
    try:
        return configure(name, **overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _fit_to_data(name: str, overrides: dict[str, int], spec: DataSpec) -> tuple[dict[str, int], str]:
    """npz / frames / videos: take C, H, W (and T -> T' when the preset needs more frames than
    the data has) from the data for every field the user did not set (videos: H and W only, and
    only without --resize); says what it chose."""
    shape = data_shape(spec)
    if shape is None:
        return overrides, ""
    base, fitted, chosen = preset(name), dict(overrides), []
    for key in ("channels", "height", "width"):
        if key in shape and key not in overrides and getattr(base, key) != shape[key]:
            fitted[key] = shape[key]
            chosen.append(f"{key}={shape[key]}")
    t_in = overrides.get("in_frames", base.in_frames)
    t_out = overrides.get("out_frames", base.out_frames)
    if "in_frames" not in overrides and "out_frames" not in overrides and t_in + t_out > shape["frames"] >= 2:
        fitted["in_frames"], fitted["out_frames"] = shape["frames"] // 2, shape["frames"] - shape["frames"] // 2
        chosen.append(f"in_frames={fitted['in_frames']}, out_frames={fitted['out_frames']}")
    return fitted, (f"fitted preset {name} to the data: {', '.join(chosen)}" if chosen else "")


def _new_run(request: TrainRequest) -> Plan:
    dataset = request.dataset or "mmnist"
    if request.held_out_digits and dataset != "mmnist":
        raise UserError(f"--held-out-digits holds MNIST digits out of Moving MNIST clips; --dataset {dataset} has none")
    clips_on_device = _clips_on_device(request, dataset)
    name = request.preset or DEFAULT_PRESET[dataset]
    spec = _data_spec(request)
    overrides, fitted = _fit_to_data(name, request.overrides, spec)
    config = _config(name, overrides)
    datasets = build_datasets(spec, config)
    defaults = TABLE2[dataset]
    batch_size = request.batch_size or defaults["batch_size"]
    steps_per_epoch = clip_count(datasets[0]) // (batch_size * request.processes)
    if steps_per_epoch == 0:
        per = f" × {request.processes} processes" if request.processes > 1 else ""
        raise UserError(
            f"the training split has {clip_count(datasets[0])} clips, fewer than --batch-size {batch_size}{per}; "
            "lower --batch-size"
        )
    global_batch = batch_size * request.processes
    lr, lr_rule = request.lr, ""
    if lr is None:
        lr = scaled_lr(defaults["lr"], defaults["batch_size"], global_batch)
        if global_batch != defaults["batch_size"]:
            lr_rule = (
                f"lr {lr:.3g} = {defaults['lr']:g} × sqrt({global_batch} / {defaults['batch_size']}): Table 2's lr for its "
                f"batch of {defaults['batch_size']}, scaled by the square-root rule for Adam; --lr sets it"
            )
    settings = RunSettings(
        dataset=dataset,
        preset=name,
        lr=lr,
        schedule=request.schedule or defaults["schedule"],
        final_div_factor=request.final_div_factor or defaults["final_div_factor"],
        batch_size=batch_size,
        total_steps=request.max_steps or (request.epochs or defaults["epochs"]) * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        seed=spec.seed,
        clips_per_epoch=spec.clips_per_epoch,
        val_clips=spec.val_clips,
        val_fraction=spec.val_fraction,
        world_size=request.processes,
        clips_on_device=clips_on_device,
    )
    return Plan(settings, config, spec, datasets, fitted=fitted, lr_rule=lr_rule)


def _clips_on_device(request: TrainRequest, dataset: str) -> bool:
    """Moving MNIST on CUDA is made on the GPU unless asked otherwise; other data never is."""
    if request.clips_on_device is None:
        return dataset == "mmnist" and request.device == "cuda"
    if request.clips_on_device and dataset != "mmnist":
        raise UserError(f"--clips-on-device makes Moving MNIST clips; --dataset {dataset} is read by loader workers")
    return request.clips_on_device


def _resumed(request: TrainRequest, payload: dict[str, Any]) -> tuple[RunSettings, STLightConfig, DataSpec]:
    """Settings, config and data spec of the run in ``payload``; requests that would change them are refused."""
    saved = payload["run"]
    config = STLightConfig.from_dict(payload["config"])
    clashes = []
    if request.dataset is not None and request.dataset != saved["dataset"]:
        clashes.append(f"--dataset {request.dataset} (run: {saved['dataset']})")
    if request.preset is not None and request.preset != saved["preset"]:
        clashes.append(f"--preset {request.preset} (run: {saved['preset']})")
    for name, value in request.overrides.items():
        if value != getattr(config, name):
            clashes.append(f"{flag(name)} {value} (run: {getattr(config, name)})")
    for name in RUN_FIELDS:
        value, was = getattr(request, name), saved.get(name, getattr(RunSettings, name, None))  # older runs: the default
        if value is not None and value != was:
            clashes.append(clash(name, value, was))
    saved_data = payload.get("data") or {}
    for name in DATA_FIELDS:  # the windows or digits a run trains on
        value, was = getattr(request, name), saved_data.get(name, getattr(DataSpec, name, None))
        if value is not None and value != was:
            clashes.append(clash(name, value, was))
    if request.max_steps is not None and request.max_steps != saved["total_steps"]:
        clashes.append(f"--max-steps {request.max_steps} (run: {saved['total_steps']})")
    epochs = request.epochs
    if epochs is not None and request.max_steps is None and epochs * saved["steps_per_epoch"] != saved["total_steps"]:
        clashes.append(f"--epochs {epochs} (run: {saved['total_steps'] / saved['steps_per_epoch']:g} epochs)")
    if clashes:
        raise UserError(
            f"--resume continues the run in {request.out} unchanged, but these flags differ from it: "
            f"{'; '.join(clashes)}. Drop them, or start a new run with another --out"
        )
    return RunSettings(**saved), config, _data_spec(request, payload.get("data"))
