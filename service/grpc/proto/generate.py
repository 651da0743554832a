"""Regenerate the Python modules of ``open_inference_grpc.proto`` beside this file::

    python -m service.grpc.proto.generate          # rewrite them
    python -m service.grpc.proto.generate --check  # exit 1 when they differ from what protoc writes

The modules are committed, so that ``pip install stlight`` needs no protobuf compiler; this needs
``grpcio-tools``, at the version the dev extra pins (its output changes with its version, and
``tests/test_grpc.py`` runs ``--check``).

protoc's output is changed in two ways, both here so that a regeneration repeats them:

- the messages go into a descriptor pool of their own, not protobuf's default one: tritonclient,
  KServe and MLServer register the same names (package ``inference``) there, and the default pool
  refuses a name twice, so a process importing one of them beside this module would fail;
- the service module imports the messages relative to its package (protoc writes a top-level
  ``import open_inference_grpc_pb2``, which only works with this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "open_inference_grpc.proto"
STEM = PROTO.removesuffix(".proto")
NOTE = "# Generated from open_inference_grpc.proto by service/grpc/proto/generate.py (protoc, then two edits). Do not edit.\n"

_EDITS = {
    f"{STEM}_pb2.py": (
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "# a pool of its own: other OIP clients register these names (package inference) in the default one\n"
        "POOL = _descriptor_pool.DescriptorPool()\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    ),
    f"{STEM}_pb2.pyi": (
        "DESCRIPTOR: _descriptor.FileDescriptor\n",
        "POOL: _descriptor_pool.DescriptorPool\nDESCRIPTOR: _descriptor.FileDescriptor\n",
    ),
    f"{STEM}_pb2_grpc.py": (f"\nimport {STEM}_pb2 as ", f"\nfrom . import {STEM}_pb2 as "),
}
_PYI_IMPORT = (
    "from google.protobuf import descriptor as _descriptor\n",
    "from google.protobuf import descriptor_pool as _descriptor_pool\n",
)


def generate() -> dict[str, str]:
    """What the generated files should hold: ``{file name: text}``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        code = protoc.main(
            ["grpc_tools.protoc", f"-I{HERE}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", PROTO]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {HERE / PROTO} (exit {code})")
        texts = {name: (Path(out) / name).read_text(encoding="utf-8") for name in _EDITS}
    for name, (old, new) in _EDITS.items():
        if texts[name].count(old) != 1:
            raise SystemExit(f"protoc's {name} no longer holds {old.strip()!r} once; update {__file__}")
        texts[name] = NOTE + texts[name].replace(old, new)
    line, added = _PYI_IMPORT
    texts[f"{STEM}_pb2.pyi"] = texts[f"{STEM}_pb2.pyi"].replace(line, line + added, 1)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = HERE / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python -m service.grpc.proto.generate", file=sys.stderr)
        return 1
    print(f"{'rewrote' if stale else 'up to date:'} {', '.join(stale or _EDITS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
