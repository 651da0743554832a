"""``--model-control poll``: the repository folder decides what is served, as in Triton's poll mode.

Every ``--repository-poll-s`` seconds the folder is scanned again and each model's files are
compared, by inode, size and modification time, with what was read last:

- a new model, or a model with a new, changed or removed version, is loaded again with
  :meth:`Repository.reload` -- the same path as a load call: the new versions are loaded and
  warmed while the old ones serve, the table switches once they are warm, and requests in flight
  finish on the versions they started on;
- a file that does not load or warm up changes nothing: the versions before keep serving (the
  failure is audited, and retried only when the files change again, not at every poll);
- a model whose files are gone is unloaded (requests in flight finish first).

``--model`` files are not the folder's and are never touched. Each change is audited as
``poll_load`` / ``poll_unload`` (:meth:`Repository.audit`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.core.errors import ServeError
from service.inference.repository import POLLER, Repository, Stamp, file_stamps, scan

log = logging.getLogger("stlight.repository")

Found = dict[str, tuple[dict[str, Path] | str, dict[str, Stamp]]]


def scan_with_stamps(root: Path) -> Found:
    """Every model in ``root``: its versions (or why it cannot be served) and its files' stamps."""
    return {name: (versions, file_stamps(versions)) for name, versions in scan(root).items()}


class Poller:
    """Rescans one repository's folder in the event loop until stopped."""

    def __init__(self, repository: Repository) -> None:
        assert repository.root is not None, "polling needs a repository folder"
        self.repository, self.root = repository, repository.root
        self.every_s = repository.options.repository_poll_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stlight-repository-poll")
        log.info("following %s: rescanned every %g s (--model-control poll)", self.root, self.every_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.poll_once()
            except OSError as exc:  # the folder unmounted or unreadable: keep serving, try again
                log.warning("cannot rescan %s (%s); the models served stay as they are", self.root, exc)
            except Exception:
                log.exception("rescanning %s failed; the models served stay as they are", self.root)

    async def poll_once(self) -> None:
        """One rescan: load what is new or changed, unload what is gone."""
        repository = self.repository
        found = await asyncio.to_thread(scan_with_stamps, self.root)
        for name, (versions, stamps) in found.items():
            if name in repository.explicit or repository.stamps.get(name) == stamps:
                continue
            repository.stamps[name] = stamps  # tried once per change of the files, whatever the outcome
            if isinstance(versions, str):  # e.g. a version folder without its model.onnx yet
                if name in repository.serving:
                    repository.audit("poll_load", name, "failed", POLLER, reason=versions)
                else:
                    repository.failed[name] = versions
                continue
            await self._load(name)
        for name in [n for n in repository.stamps if n not in found]:
            del repository.stamps[name]
            if name in repository.serving or name in repository.failed:
                await self._unload(name)

    async def _load(self, name: str) -> None:
        try:
            fresh = await self.repository.reload(name)
        except ServeError as exc:  # the versions before (if any) keep serving
            self.repository.audit("poll_load", name, "failed", POLLER, reason=exc.detail)
            return
        self.repository.audit("poll_load", name, "ok", POLLER, [s.version for s in fresh])

    async def _unload(self, name: str) -> None:
        repository = self.repository
        versions = repository.versions(name)
        await repository.take_down(name)
        # gone from the folder: the server no longer knows the name (not "unloaded, load it again")
        repository.unloaded.discard(name)
        repository.failed.pop(name, None)
        repository.audit("poll_unload", name, "ok", POLLER, versions)
