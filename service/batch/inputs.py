"""Finding inputs: expand the command line's files and folders into :class:`Source` s, each with
the place its outputs go, and tell which are already done."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.core.frames import IMAGE_SUFFIXES

Kind = Literal["npy", "npz", "frames", "gif", "video"]
# a file input's kind by its suffix; a folder of FRAME_SUFFIXES images is the kind "frames".
# A new input kind adds its suffix here and its reader in service/predict/readers.py.
# (kept in step with service.core.video.SUFFIX_TYPES, not imported: discovery needs no PyAV)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".avi", ".mkv")
FILE_KINDS: dict[str, Kind] = {".npy": "npy", ".npz": "npz", ".gif": "gif", **dict.fromkeys(VIDEO_SUFFIXES, "video")}
# still images that make a frames folder (a .gif is always a clip of its own)
FRAME_SUFFIXES = IMAGE_SUFFIXES


@dataclass(frozen=True)
class Source:
    """One input and where its outputs go: ``base`` + ``.npy`` / ``.gif`` / ``/``."""

    path: Path
    kind: Kind
    base: Path

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def npy(self) -> Path:
        return self.base.with_name(self.base.name + ".npy")

    @property
    def gif(self) -> Path:
        return self.base.with_name(self.base.name + ".gif")

    @property
    def mp4(self) -> Path:
        return self.base.with_name(self.base.name + ".mp4")


def file_kind(path: Path) -> Kind | None:
    return FILE_KINDS.get(path.suffix.lower())


def is_frame_file(path: Path) -> bool:
    return path.suffix.lower() in FRAME_SUFFIXES and not path.name.startswith(".")


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a frames folder, in name order (hidden files left out)."""
    return sorted(p for p in folder.iterdir() if is_frame_file(p) and p.is_file())


def _walk(root: Path, out_dir: Path) -> Iterator[tuple[Path, Kind]]:
    """Inputs under ``root`` in name order; hidden entries and the output folder are left out."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != out_dir)
        if any(is_frame_file(Path(f)) for f in files):
            yield here, "frames"
        for name in sorted(files):
            kind = file_kind(Path(name))
            if kind and not name.startswith("."):
                yield here / name, kind


def _supported() -> str:
    return f"{', '.join(FILE_KINDS)}, or a folder (of frame images {'/'.join(FRAME_SUFFIXES)}, or of inputs)"


def discover(inputs: Sequence[str | Path], out_dir: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand the command line's inputs into sources; returns ``(sources, failures)``.

    A file given directly writes to ``out_dir/<stem>``; inputs found inside a given folder keep
    their sub-folder below ``out_dir``. Two inputs that would write the same output fail (the
    first one found wins)."""
    out_resolved = out_dir.resolve()
    sources: list[Source] = []
    failures: list[tuple[str, str]] = []
    taken: dict[Path, str] = {}

    def add(path: Path, kind: Kind, base: Path) -> None:
        if base in taken:
            clash = f"would write {base}.npy, which {taken[base]} also writes; rename one of them or run them separately"
            failures.append((str(path), clash))
            return
        taken[base] = str(path)
        sources.append(Source(path, kind, base))

    for given in map(Path, inputs):
        if not given.exists():
            failures.append((str(given), "does not exist"))
        elif given.is_file():
            kind = file_kind(given)
            if kind is None:
                failures.append((str(given), f"not a supported input: expected {_supported()}"))
            else:
                add(given, kind, out_dir / given.stem)
        else:
            found = list(_walk(given, out_resolved))
            if not found:
                failures.append(
                    (str(given), f"folder holds no inputs ({', '.join(FILE_KINDS)}, or frame images {'/'.join(FRAME_SUFFIXES)})")
                )
            for path, kind in found:
                if path == given:  # the folder itself is a clip of frames
                    add(path, kind, out_dir / (given.resolve().name or "frames"))
                else:
                    relative = path.relative_to(given)
                    add(path, kind, out_dir / relative.parent / (relative.name if kind == "frames" else relative.stem))
    return sources, failures


def finished(source: Source, png: bool, gif: bool, video: bool = False) -> bool:
    """Whether every output asked for exists (the .npy is written last, so it marks completion)."""
    if not source.npy.is_file():
        return False
    if png and not (source.base.is_dir() and any(source.base.rglob("frame_*.png"))):
        return False
    if video and not (source.mp4.is_file() or (source.base.is_dir() and any(source.base.glob("clip_*.mp4")))):
        return False
    return not gif or source.gif.is_file() or (source.base.is_dir() and any(source.base.glob("clip_*.gif")))
