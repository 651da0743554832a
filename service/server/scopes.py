"""What an API key may do: its scopes, the route groups, and which scope each group needs.

A key carries scopes (``infer``, ``repository``, ``metrics``, ``admin``); every route that is not
public belongs to one group (``inference``, ``repository``, ``metrics``), and each group needs one
scope, by default the one of its own name (``inference`` needs ``infer``). ``--restricted-api
GROUP=SCOPE`` changes that, in the spirit of Triton's ``--http-restricted-api``: e.g.
``repository=admin`` lets only admin keys load and unload, ``metrics=infer`` lets every client key
scrape. ``admin`` satisfies every group.

Pure Python (no FastAPI, no gRPC): the settings validate ``--restricted-api`` with it, and both
protocols classify their routes with it.
"""

from __future__ import annotations

from collections.abc import Iterable

SCOPES = ("infer", "repository", "metrics", "admin")
ADMIN = "admin"
DEFAULT_SCOPES = frozenset({"infer"})  # a plain KEY line: what every key could do before scopes
# group -> the scope it needs unless --restricted-api says otherwise
DEFAULT_RESTRICTIONS: dict[str, str] = {"inference": "infer", "repository": "repository", "metrics": "metrics"}
GROUPS = tuple(DEFAULT_RESTRICTIONS)

REPOSITORY_PREFIX = "/v2/repository/"  # index, load, unload (Triton's model-repository group)
METRICS_PATH = "/metrics"
GRPC_REPOSITORY_PREFIX = "/inference.GRPCInferenceService/Repository"  # RepositoryIndex, ...ModelLoad, ...ModelUnload


def parse_restrictions(items: Iterable[str]) -> dict[str, str]:
    """``GROUP=SCOPE`` items (several per item, comma-separated) over the defaults. Raises
    ``ValueError`` naming the item and what was expected."""
    restrictions = dict(DEFAULT_RESTRICTIONS)
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            group, sep, scope = (s.strip() for s in part.partition("="))
            if not sep or group not in GROUPS or scope not in SCOPES:
                raise ValueError(
                    f"--restricted-api {part!r}: expected GROUP=SCOPE with GROUP one of {', '.join(GROUPS)} "
                    f"and SCOPE one of {', '.join(SCOPES)}"
                )
            restrictions[group] = scope
    return restrictions


def parse_scopes(text: str) -> frozenset[str]:
    """``infer,metrics`` or ``infer+metrics`` -> the scopes; ``ValueError`` for an unknown one."""
    scopes = frozenset(s.strip() for s in text.replace("+", ",").split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes {text!r}: expected one or more of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
    return scopes


def allows(scopes: frozenset[str], needed: str) -> bool:
    return needed in scopes or ADMIN in scopes


def http_group(path: str) -> str:
    """The group of a non-public HTTP path."""
    if path.startswith(REPOSITORY_PREFIX):
        return "repository"
    if path == METRICS_PATH:
        return "metrics"
    return "inference"


def grpc_group(method: str) -> str:
    """The group of a non-public gRPC method (``/package.Service/Method``)."""
    return "repository" if method.startswith(GRPC_REPOSITORY_PREFIX) else "inference"
