"""API keys: ``STLIGHT_API_KEYS`` (comma-separated) and/or ``--api-key-file`` (one per line,
re-read on SIGHUP or when the file changes). With any key configured, every route except the
probes and the pages a browser must load before it can send a key answers 401 unless the request
carries ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, and 403 unless that key has the
scope the route's group needs (:mod:`service.server.scopes`).

A key is ``KEY`` (scope ``infer``, named by a fingerprint of its digest) or ``NAME:KEY:SCOPES``
(scopes comma- or ``+``-separated: ``deploy:KEY:repository``). The name, never the key, is what
the access and audit lines show.

Keys are kept only as SHA-256 digests and a presented key is compared against every one of them
with ``hmac.compare_digest``: the time taken says neither which key nor how much of one matched.
No key, presented or configured, is ever written to a log or an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.errors import Forbidden, ServeError, Unauthenticated
from service.server import request_id
from service.server.problems import problem_response, status_of
from service.server.scopes import DEFAULT_RESTRICTIONS, DEFAULT_SCOPES, SCOPES, allows, http_group, parse_scopes
from service.server.settings import ServeSettings

log = logging.getLogger("stlight.security")

# Open with keys set: the probes (a kubelet or load balancer has no key); the page, the docs and
# their files under /static/ (service.server.web), which a browser loads before a person can type a key
# into the page; and the OpenAPI document, which Swagger UI fetches without one. None holds data.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/", "/favicon.ico", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
PUBLIC_PREFIXES = ("/v2/health/", "/static/")
METRICS_PATH = "/metrics"
SCOPE_WORDS = frozenset(SCOPES)
HTTP_HOW = "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
KEY_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
RECHECK_S = 1.0  # how often the key file's mtime/size/inode is looked at (on a request, not a timer)
SHORT_KEY = 16  # shorter keys are accepted with a warning: they can be guessed


class KeyFileError(Exception):
    """The key file cannot be read (at start: a one-line error; later: the old keys stay)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Key:
    """One accepted key, as its digest: the name logs show, and what it may do."""

    name: str
    digest: bytes = field(repr=False)
    scopes: frozenset[str]
    short: bool = False  # under SHORT_KEY characters: accepted, with a warning


def parse_key(text: str, where: str) -> Key:
    """``KEY`` (scope infer) or ``NAME:KEY:SCOPES``. Errors name ``where`` (the line), never the key."""
    if ":" not in text:
        digest = _digest(text)
        return Key(f"key-{digest.hex()[:8]}", digest, DEFAULT_SCOPES, len(text) < SHORT_KEY)
    name, _, rest = text.partition(":")
    key, sep, scopes = rest.rpartition(":")
    if not sep or not key.strip():
        raise KeyFileError(f"{where}: expected KEY or NAME:KEY:SCOPES (a key with ':' in it needs a name and scopes)")
    if not KEY_NAME.fullmatch(name.strip()):
        raise KeyFileError(f"{where}: the key's name must be 1-64 letters, digits, '_', '.', '@' or '-'")
    try:
        granted = parse_scopes(scopes)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    return Key(name.strip(), _digest(key.strip()), granted, len(key.strip()) < SHORT_KEY)


def parse_keys(text: str) -> list[str]:
    """Keys from a comma list (``STLIGHT_API_KEYS``); blanks and ``#`` items skipped. A bare
    scope after ``NAME:KEY:SCOPE`` continues its scopes (``ops:KEY:infer,metrics``), so the key
    file's syntax works here too."""
    items = [item.strip() for item in text.split(",")]
    joined: list[str] = []
    for item in items:
        if not item or item.startswith("#"):
            continue
        if joined and ":" in joined[-1] and ":" not in item and item in SCOPE_WORDS:
            joined[-1] += "," + item
        else:
            joined.append(item)
    return joined


def keys_from(items: list[str], where: str) -> list[Key]:
    return [parse_key(item, f"{where} entry {index}") for index, item in enumerate(items, 1)]


def read_key_file(path: Path) -> list[Key]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.__class__.__name__}: {exc}") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]
    return [parse_key(text, f"the API key file {path}, line {n}") for n, text in numbered]


@dataclass(frozen=True)
class _FileStamp:
    inode: int
    size: int
    mtime_ns: int


class KeyStore:
    """The accepted keys: fixed ones (from the environment) plus those of a file, reloaded when
    asked (SIGHUP) or when the file's inode, size or mtime changes; and which scope each route
    group needs (``restrictions``, from ``--restricted-api``)."""

    def __init__(
        self, keys: Iterable[str] = (), key_file: Path | None = None, restrictions: dict[str, str] | None = None
    ) -> None:
        self._fixed = keys_from(list(keys), "STLIGHT_API_KEYS")
        self.key_file = key_file
        self.restrictions = dict(restrictions or DEFAULT_RESTRICTIONS)
        self._from_file: list[Key] = []
        self._stamp: _FileStamp | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._warn_short(self._fixed, "STLIGHT_API_KEYS")
        if key_file is not None:
            self._load(initial=True)

    @property
    def enabled(self) -> bool:
        """Keys are required: some are configured, or a key file is (even one now empty: closed)."""
        return bool(self._fixed) or self.key_file is not None

    @property
    def count(self) -> int:
        return len(self._fixed) + len(self._from_file)

    def _stat(self) -> _FileStamp | None:
        assert self.key_file is not None
        try:
            st = os.stat(self.key_file)
        except OSError:
            return None
        return _FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, *, initial: bool = False, reason: str = "") -> None:
        assert self.key_file is not None
        stamp = self._stat()
        try:
            keys = read_key_file(self.key_file)
        except KeyFileError as exc:
            if initial:
                raise
            log.warning("%s; keeping the %d key(s) loaded before", exc, len(self._from_file))
            self._stamp = stamp
            return
        with self._lock:
            self._from_file, self._stamp = keys, stamp
        if not keys:
            log.warning("the API key file %s holds no key: every request that needs one is refused", self.key_file)
        self._warn_short(keys, str(self.key_file))
        if not initial:
            log.info("reloaded the API key file %s (%s): %d key(s)", self.key_file, reason, len(keys))

    def reload(self, reason: str = "SIGHUP") -> None:
        if self.key_file is not None:
            self._load(reason=reason)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.key_file is None or now < self._next_check:
            return
        self._next_check = now + RECHECK_S
        if self._stat() != self._stamp:
            self._load(reason="file changed")

    def check(self, presented: Iterable[str]) -> Key | None:
        """The accepted key among the presented ones, or ``None``. Every (presented, accepted)
        pair is compared, so the time taken does not depend on where a match is."""
        self._maybe_reload()
        with self._lock:
            accepted = self._fixed + self._from_file
        found: Key | None = None
        for key in presented:
            digest = _digest(key)
            for known in accepted:
                if hmac.compare_digest(digest, known.digest) and found is None:
                    found = known
        return found

    def authorize(self, presented: list[str], group: str, how: str) -> Key:
        """The key that may use ``group``'s routes, or :class:`Unauthenticated` (no key, or not
        one of ours) / :class:`Forbidden` (ours, without the scope). Both name the scope that
        group needs, never a key; ``how`` says how to send one (headers or metadata)."""
        needed = self.restrictions[group]
        key = self.check(presented)
        if key is None:
            if presented:
                raise Unauthenticated(
                    "unauthorized", f"the API key is not valid (this route needs a key with the {needed!r} scope)"
                )
            raise Unauthenticated("unauthorized", f"this route needs an API key with the {needed!r} scope: send {how}")
        request_id.annotate(key=key.name)  # the access line (and an audit line) names who, never the key
        if not allows(key.scopes, needed):
            raise Forbidden(
                "missing-scope",
                f"this route ({group}) needs a key with the {needed!r} scope (or 'admin'); the key sent has "
                f"{', '.join(sorted(key.scopes))} (the key file gives scopes as NAME:KEY:SCOPES; --restricted-api "
                f"{group}=SCOPE changes what {group} needs)",
                scope=needed,
            )
        return key

    @staticmethod
    def _warn_short(keys: list[Key], where: str) -> None:
        short = sum(k.short for k in keys)
        if short:
            log.warning("%d API key(s) from %s are shorter than %d characters and can be guessed", short, where, SHORT_KEY)


def key_store(settings: ServeSettings) -> KeyStore:
    """The keys ``settings`` name: ``api_keys`` and ``api_key_file`` together (either may rotate
    without touching the other). Raises :class:`KeyFileError` for an unreadable file, and for an
    ``api_keys`` that is set but names no key (``","``, spaces): running open then would silently
    drop the protection its author asked for."""
    raw = settings.api_keys.get_secret_value()
    keys = parse_keys(raw)
    if raw and not keys:
        raise KeyFileError(
            "STLIGHT_API_KEYS is set but holds no key (only commas or spaces); "
            "give at least one key, or unset it to run without keys"
        )
    return KeyStore(keys, settings.api_key_file, settings.restrictions())


def presented_keys(scope: Scope) -> list[str]:
    """The keys a request carries: ``Authorization: Bearer <key>`` and ``X-API-Key: <key>``."""
    keys = []
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                keys.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            keys.append(value.decode("latin-1").strip())
    return keys


def is_public(path: str, *, metrics_auth: bool) -> bool:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    return path == METRICS_PATH and not metrics_auth


class ApiKeyMiddleware:
    """401 for a request without a valid key, 403 for a key without the scope its route group
    needs, before its body is read (so an unauthenticated client learns nothing, not even the
    body-size limit). A no-op when no key is configured.

    On ``/v2`` paths the 401 body is ``{"error": ...}`` (what Open Inference Protocol clients
    parse); elsewhere it is problem+json. Both carry ``WWW-Authenticate: Bearer``."""

    def __init__(self, app: ASGIApp, *, store: KeyStore, metrics_auth: bool = False) -> None:
        self.app, self.store, self.metrics_auth = app, store, metrics_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._watch_sighup()
        if scope["type"] != "http" or not self.store.enabled or is_public(scope["path"], metrics_auth=self.metrics_auth):
            await self.app(scope, receive, send)
            return
        presented = presented_keys(scope)
        try:
            self.store.authorize(presented, http_group(scope["path"]), HTTP_HOW)
        except ServeError as refusal:
            # RFC 6750: invalid_token for a key that is not ours, insufficient_scope for one that is
            challenge = 'Bearer realm="stlight"'
            if isinstance(refusal, Forbidden):
                challenge += f', error="insufficient_scope", scope="{refusal.extra["scope"]}"'
            elif presented:
                challenge += ', error="invalid_token"'
            headers = {"WWW-Authenticate": challenge}
            # path: under /v2 the answer is OIP's {"error": ...}, as tritonclient parses it
            answer = problem_response(
                status_of(refusal), refusal.detail, kind=refusal.kind, headers=headers, path=scope["path"], **refusal.extra
            )
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _watch_sighup(self) -> None:
        """Reload the key file on SIGHUP, from the event loop (where logging is safe). Only the
        main thread may set signal handlers; an app run elsewhere (in-process tests) does without."""
        if self.store.key_file is None or not hasattr(signal, "SIGHUP"):
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.store.reload)
        except (RuntimeError, ValueError, NotImplementedError):
            log.debug("SIGHUP reload not installed (not the main thread); the file is still re-read when it changes")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def warn_if_open(host: str, store: KeyStore) -> None:
    """Without keys, a server reachable from other hosts answers anyone: say so at start."""
    if not store.enabled and not is_loopback(host):
        log.warning(
            "no API keys are set and the service listens on %s: anyone who reaches this port can use it "
            "(set STLIGHT_API_KEYS or --api-key-file; see docs/operations.md)",
            host,
        )


def document_keys(app: FastAPI, store: KeyStore, metrics_auth: bool) -> None:
    """With keys, the OpenAPI document declares both ways to send one, so /docs has an
    'Authorize' button; public routes are marked as needing none."""
    if not store.enabled:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        for path, operations in schema.get("paths", {}).items():
            if is_public(path, metrics_auth=metrics_auth):
                for operation in operations.values():
                    operation["security"] = []
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
