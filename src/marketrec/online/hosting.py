"""The model versions one service hosts: its own model and the others its variants name.

One `marketrec serve` answers an A/B test or a staged rollout of two model versions by
itself. Beside the primary model (the folder it serves, hot-swapped by `model` records as
always) it hosts each extra model folder a variant names (`model = "DIR"` in an experiment
or a rollout, or `serve --model-version DIR`), each as its own `LiveRecommender` over the
SAME event log. Writes go through the primary, once; every hosted version applies every
record before its next answer (each syncs on read), so all versions are equally fresh and
differ only in the model. An extra version does not follow `model` records: they publish
the primary's retrained successors.

Folders named at start load before the service is ready (`add`, then `recover`). A folder
that first appears later (a rollout started while the service runs) loads and replays in
the background (`find`); until it is caught up, `find` answers None and the service serves
that variant's requests as if the user were outside it.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any

from marketrec.core.errors import ConfigError
from marketrec.online.live import LiveRecommender
from marketrec.online.versions import model_version, trained_offset
from marketrec.pipeline.recommender import load_recommender

log = logging.getLogger(__name__)


class HostedVersions:
    """The primary `LiveRecommender` and the extra versions beside it, by version name."""

    def __init__(self, primary: LiveRecommender) -> None:
        self.primary = primary
        self._extras: dict[str, LiveRecommender] = {}  # version → its live state
        self._folders: dict[Path, str] = {}  # extra folder → its version
        self._loading: dict[Path, str | None] = {}  # background loads: folder → error
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- hosting
    def add(self, folder: str | Path) -> LiveRecommender:
        """Host the model in `folder` (loaded now, replayed by `recover`); the primary when
        the folder holds the primary's version. A folder that does not load raises
        `ConfigError` naming it."""
        path = _resolved(str(folder))
        with self._lock:
            known = self._folders.get(path)
        if known is not None:
            return self._extras.get(known, self.primary)
        if self._holds_primary(path):
            with self._lock:
                self._folders[path] = self.primary.version
            return self.primary
        live = self._load(path)
        with self._lock:
            if live.version in self._extras:
                raise ConfigError(
                    f"model folders {path} and {self._folder_of(live.version)} both hold "
                    f"version '{live.version}'"
                )
            self._extras[live.version] = live
            self._folders[path] = live.version
        return live

    def find(self, version: str | None, folder: str | None = None) -> LiveRecommender | None:
        """The ready version a variant names, by folder, else by version name (both: they
        must agree); None when it is not hosted, or not caught up yet: a folder not seen
        before starts loading in the background."""
        if folder is not None:
            path = _resolved(folder)
            with self._lock:
                named = self._folders.get(path)
                loading = path in self._loading
            if named is None and not loading:
                if self._holds_primary(path):
                    named = self.add(path).version
                else:
                    self._load_later(path)
                    return None
            if named is None or (version is not None and version != named):
                return None
            version = named
        if version == self.primary.version:
            return self.primary
        live = self._extras.get(version) if version is not None else None
        return live if live is not None and live.ready else None

    def _holds_primary(self, path: Path) -> bool:
        return path.is_dir() and model_version(path) == self.primary.version

    def _load(self, path: Path) -> LiveRecommender:
        if not path.is_dir():
            raise ConfigError(f"model folder {path} not found")
        try:
            model = load_recommender(path)
        except Exception as exc:  # whatever a broken folder raises: name the folder
            raise ConfigError(f"model folder {path} does not load: {exc}") from None
        return LiveRecommender(
            model,
            self.primary.log,  # the one log: every version applies every record
            version=model_version(path),
            observer=self.primary.observer,
            trained_up_to=trained_offset(path),
            follow_swaps=False,
            max_batch=self.primary.max_batch,
            apply_lag_s=self.primary.apply_lag_s,
            rank_budget_ms=self.primary.rank_budget_ms,
        )

    def _load_later(self, path: Path) -> None:
        with self._lock:
            if path in self._loading:
                return
            self._loading[path] = None
        threading.Thread(
            target=self._load_and_recover, args=(path,), name="host-model", daemon=True
        ).start()

    def _load_and_recover(self, path: Path) -> None:
        try:
            live = self._load(path)
            live.recover()
        except Exception as exc:
            log.exception("could not host the model in %s", path)
            with self._lock:
                self._loading[path] = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._extras.setdefault(live.version, live)
            self._folders[path] = live.version
            del self._loading[path]
        log.info("hosting model version %s from %s", live.version, path)

    def _folder_of(self, version: str) -> Path | None:
        return next((f for f, v in self._folders.items() if v == version), None)

    # ----------------------------------------------------------------- state
    @property
    def versions(self) -> list[str]:
        """Every hosted version, the primary's first."""
        return [live.version for live in self.all()]

    def all(self) -> list[LiveRecommender]:
        with self._lock:
            return [self.primary, *self._extras.values()]

    @property
    def ready(self) -> bool:
        """Every version hosted since the start is loaded and replayed (one still loading
        for a rollout that appeared later does not hold the service back)."""
        return all(live.ready for live in self.all())

    @property
    def recovery_error(self) -> str | None:
        failed = [f"{v.version}: {v.recovery_error}" for v in self.all() if v.recovery_error]
        return failed[0] if failed else None

    def recover(self) -> None:
        """Replay the log into every version not ready yet, the primary first."""
        for live in self.all():
            if not live.ready:
                live.recover()

    def describe(self) -> list[dict[str, Any]]:
        """What `/readyz` lists: each version with its state, and the folders loading."""
        out: list[dict[str, Any]] = [
            {
                "model_version": live.version,
                "primary": live is self.primary,
                "ready": live.ready,
                "offset": live.offset,
            }
            for live in self.all()
        ]
        with self._lock:
            for path, version in self._folders.items():
                entry = next((e for e in out if e["model_version"] == version), None)
                if entry is not None:
                    entry.setdefault("folder", str(path))
            for path, error in self._loading.items():
                out.append({"folder": str(path), "ready": False, "loading": error is None})
                if error is not None:
                    out[-1]["error"] = error
        return out

    def close(self) -> None:
        """Close the log the versions share (once: the primary owns it)."""
        self.primary.close()


@functools.lru_cache(maxsize=1024)
def _resolved(folder: str) -> Path:
    """A variant's folder as an absolute path, resolved once per name: `find` runs on every
    request of a variant that names a folder, and `resolve` is a file-system call."""
    return Path(folder).resolve()


__all__ = ["HostedVersions"]
