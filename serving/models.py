"""Versioned models for the service: resolve aliases, load versions, keep a bounded LRU of them,
and follow alias moves (promotion, rollback) without a restart.

A request resolves its model to a concrete version *once*, at its start, and keeps a
reference to that `LoadedModel` until it answers: an alias moving or a version being evicted
meanwhile never fails it. `refresh` (run every ``reload_interval_seconds`` by the service)
reads the aliases from MLflow and loads a newly aliased version *before* switching the alias
to it, so requests never wait for a load after a promotion or rollback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.spec import FeatureSpec
from models.device import place, resolve_device
from pipelines.registry import Registry, feature_spec_from_meta

log = logging.getLogger("mt5prob.serving")


class UnknownModel(LookupError):
    """A model name or version (or alias) the service does not serve."""


@dataclass
class LoadedModel:
    """One registered version in memory: the unwrapped predictor and what it expects."""

    name: str
    version: str
    predictor: Any  # pipelines.registry.ProbabilityModel
    columns: list[str]
    meta: dict[str, Any]
    device: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def feature_spec(self) -> FeatureSpec | None:
        return feature_spec_from_meta(self.meta)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(up) for rows whose columns are `columns` in order (float64, clipped to [0, 1])."""
        return np.clip(self.predictor.predict_proba(X), 0.0, 1.0)


class ModelManager:
    """Thread-safe: the service's request threads and its refresher share one instance."""

    def __init__(
        self,
        tracking_uri: str,
        names: Iterable[str],
        max_loaded: int = 4,
        device: str = "auto",
        default_alias: str = "champion",
    ) -> None:
        self.registry = Registry(tracking_uri)
        self.names = list(dict.fromkeys(names))
        if not self.names:
            raise ValueError("no model names to serve (serving.models is empty and none was derived)")
        self.max_loaded = max_loaded
        self.device = resolve_device(device)
        self.default_alias = default_alias
        self._aliases: dict[str, dict[str, str]] = {n: {} for n in self.names}
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        self.changes: list[tuple[float, str, str, str | None, str]] = []  # (when, name, alias, old, new)

    # ------------------------------------------------------------ resolution
    def aliases(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases.get(name, {}))

    def resolve(self, name: str | None, ref: str | None) -> tuple[str, str]:
        """(model name, version) for a name (default: the first served) and a ref: an alias
        (default ``champion``) or a version number."""
        name = name or self.names[0]
        if name not in self._aliases:
            raise UnknownModel(f"model {name!r} is not served here (served: {self.names})")
        ref = (ref or self.default_alias).strip()
        if ref.isdigit():
            with self._lock:
                if (name, ref) in self._loaded:
                    return name, ref
            try:
                self.registry.require_version(name, ref)
            except ValueError as exc:
                raise UnknownModel(str(exc)) from exc
            return name, ref
        version = self.aliases(name).get(ref)
        if version is None:
            raise UnknownModel(f"model {name!r} has no alias {ref!r} (aliases: {sorted(self.aliases(name))})")
        return name, version

    def get(self, name: str, version: str) -> LoadedModel:
        """The loaded version (loading it on first use; LRU-evicting beyond `max_loaded`)."""
        key = (name, version)
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per version, however many requests ask at once
            with self._lock:
                model = self._loaded.get(key)
            if model is None:
                model = self._load(name, version)
            with self._lock:
                self._loaded[key] = model
                self._loaded.move_to_end(key)
                self._evict()
            return model

    def _load(self, name: str, version: str) -> LoadedModel:
        started = time.perf_counter()
        pyfunc = self.registry.load(name, version)
        inner = pyfunc.unwrap_python_model()
        place(inner.predictor, self.device)
        model = LoadedModel(
            name, version, inner, list(inner.columns), dict(getattr(inner, "meta", {})), self.device
        )
        log.info(
            "loaded %s version %s on %s in %.2f s", name, version, self.device, time.perf_counter() - started
        )
        return model

    def _evict(self) -> None:
        aliased = {(n, v) for n, a in self._aliases.items() for v in a.values()}
        while len(self._loaded) > self.max_loaded:
            victim = next((k for k in self._loaded if k not in aliased), None)
            if victim is None:  # everything loaded is aliased: drop the least recently used anyway
                victim = next(iter(self._loaded))
            del self._loaded[victim]
            log.info("evicted %s version %s (LRU, max_loaded_versions=%d)", *victim, self.max_loaded)

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._loaded)

    # ------------------------------------------------------------ following MLflow
    def refresh(self) -> list[tuple[str, str, str | None, str]]:
        """Read every served model's aliases; load a newly pointed-to default-alias version,
        then publish the new alias table. Returns the changes (name, alias, old, new)."""
        changes = []
        for name in self.names:
            try:
                fresh = self.registry.aliases(name)
            except Exception as exc:  # noqa: BLE001 - MLflow down: keep serving what we have
                log.warning("could not read aliases of %s: %s", name, exc)
                continue
            current = self.aliases(name)
            if fresh == current:
                continue
            target = fresh.get(self.default_alias)
            if target is not None and target != current.get(self.default_alias):
                self.get(name, target)  # warm before switching: no request waits on the load
            with self._lock:
                self._aliases[name] = fresh
            for alias in sorted(set(fresh) | set(current)):
                if fresh.get(alias) != current.get(alias):
                    changes.append((name, alias, current.get(alias), fresh.get(alias)))
                    self.changes.append(
                        (time.time(), name, alias, current.get(alias), fresh.get(alias) or "")
                    )
                    log.info("%s: alias %s %s -> %s", name, alias, current.get(alias), fresh.get(alias))
        return changes
