"""The one model cache of the scoring core, shared by the BentoML service and live scoring:
resolve aliases, load registered versions onto a device, keep a bounded LRU of them, and
follow alias moves (promotion, rollback) without a restart.

A caller resolves a model to a concrete version *once* and keeps a reference to that
`LoadedModel` until it is done: an alias moving or a version being evicted meanwhile never
fails it. `refresh` (every ``serving.reload_interval_seconds`` in the service, at the start
of every cycle in live scoring) reads the aliases from MLflow and loads a newly aliased
version *before* switching the alias to it, so nobody waits for a load after a promotion or
rollback. The device is ``serving.device`` and the followed alias ``serving.alias`` for both.
"""

from __future__ import annotations

import logging
import re
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

log = logging.getLogger("mt5prob.models")


_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
MAX_VERSION_DIGITS = 9


def _shown(text: str, limit: int = 40) -> str:
    """`text` quoted for an error message, cut at `limit` characters (a caller's input is
    never echoed back whole)."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


class BadVersion(ValueError):
    """A version reference that is neither a version number nor an alias name (the message
    says which spellings are accepted, quoting at most 40 characters of the input)."""


def canonical_ref(ref: str) -> str:
    """The one spelling of a version reference, decided before any authorisation or loading:
    ASCII digits → the version number without leading zeros (``"02"`` → ``"2"``); an alias
    name (a letter or ``_`` then up to 63 letters, digits, ``_`` or ``-``) → itself. Anything
    else — spaces, signs, full-width or other scripts' digits, over 9 digits — raises
    `BadVersion`, so no second spelling can reach a version by a different cache key or
    slip past a comparison with a pinned version."""
    if isinstance(ref, str) and ref.isascii():
        if ref.isdigit() and len(ref) <= MAX_VERSION_DIGITS:
            return str(int(ref))
        if _ALIAS.fullmatch(ref):
            return ref
    shown = _shown(ref) if isinstance(ref, str) else type(ref).__name__
    raise BadVersion(
        f"version {shown}: expected a version number (ASCII digits, at most {MAX_VERSION_DIGITS}) "
        "or an alias such as champion"
    )


class UnknownModel(LookupError):
    """A model name or version (or alias) that is not served."""


class NoSkill(LookupError):
    """A model whose versions were all refused by the promotion gate for want of skill: it has
    no champion, and its probabilities are not served as if they were informative. The
    message names the latest challenger and the gate's interval."""


class ModelUnavailable(RuntimeError):
    """A version that exists but cannot be served now: its artifact failed to load (it is
    marked broken and not retried for ``broken_seconds``) or the registry cannot be reached.
    The message names the model and version and says when the next attempt is."""


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
    skill: str = "unknown"  # the gate's verdict (version tag gate_skill): demonstrated, none, unknown

    @property
    def feature_spec(self) -> FeatureSpec | None:
        return feature_spec_from_meta(self.meta)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(label 1) for rows whose columns are `columns` in order (float64, clipped to
        [0, 1]); (n, 3) [P(down), P(flat), P(up)] for a three-class model."""
        return np.clip(self.predictor.predict_proba(X), 0.0, 1.0)


class ModelCache:
    """Thread-safe: request threads, a refresher thread and a scoring loop may share one.

    `names` are the registered models followed from the start; `follow` adds more later
    (live scoring follows whatever its tenants subscribe to)."""

    def __init__(
        self,
        registry: Registry | str,
        names: Iterable[str] = (),
        max_loaded: int = 4,
        device: str = "auto",
        default_alias: str = "champion",
        broken_seconds: float = 60.0,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.max_loaded = max_loaded
        self.broken_seconds = broken_seconds
        self._broken: dict[tuple[str, str], tuple[float, str]] = {}  # → (retry after, monotonic; why)
        self.registry_error: str | None = None  # why the last `refresh` could not read MLflow
        self.device = resolve_device(device)
        self.default_alias = default_alias
        self._aliases: dict[str, dict[str, str]] = {n: {} for n in dict.fromkeys(names)}
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        # name → (``no skill`` | ``refused by the gate``, why): it has no champion because the
        # gate refused its challenger for want of skill, or for another rule (calibration)
        self._refused: dict[str, tuple[str, str]] = {}
        self._skill_unread: set[str] = set()  # names whose challenger's gate tags could not be read
        self.changes: list[tuple[float, str, str, str | None, str]] = []  # (when, name, alias, old, new)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._aliases)

    def follow(self, names: Iterable[str]) -> None:
        """Start following more model names (their aliases are read by the next `refresh`)."""
        with self._lock:
            for name in names:
                self._aliases.setdefault(name, {})

    # ------------------------------------------------------------ resolution
    def aliases(self, name: str) -> dict[str, str]:
        with self._lock:
            return dict(self._aliases.get(name, {}))

    def resolve(self, name: str | None, ref: str | None) -> tuple[str, str]:
        """(model name, version) for a name (default: the first followed) and a ref: an alias
        (default `default_alias`) or a version number."""
        names = self.names
        if not names and name is None:
            raise UnknownModel("no model is served")
        name = name or names[0]
        if name not in names:
            raise UnknownModel(f"model {_shown(name, 100)} is not served here (served: {names})")
        ref = canonical_ref(ref or self.default_alias)  # BadVersion for any other spelling
        if ref.isdigit():
            with self._lock:
                if (name, ref) in self._loaded:
                    return name, ref
            try:
                self.registry.require_version(name, ref)
            except ValueError as exc:
                raise UnknownModel(str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - MLflow unreachable: not the caller's fault
                raise ModelUnavailable(
                    f"cannot look up version {ref} of {name}: the model registry is unavailable "
                    f"({type(exc).__name__})"
                ) from exc
            return name, ref
        version = self.aliases(name).get(ref)
        if version is None and ref == self.default_alias:
            why = self.no_skill(name)
            if why is not None:
                raise NoSkill(why)
        if version is None and not self.aliases(name):
            raise UnknownModel(
                f"model {name} is not built yet: no version of it is registered (train its cell of the "
                "matrix, or ask for another model: /models lists them)"
            )
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
        with load_lock:  # one load per version, however many callers ask at once
            with self._lock:
                model = self._loaded.get(key)
                broken = self._broken.get(key)
            if model is None and broken is not None:
                wait = broken[0] - time.monotonic()
                if wait > 0:
                    raise ModelUnavailable(
                        f"version {version} of {name} cannot be loaded ({broken[1]}); "
                        f"next attempt in {wait:.0f} s"
                    )
            if model is None:
                try:
                    model = self._load(name, version)
                except Exception as exc:  # noqa: BLE001 - a corrupt or unreadable artifact
                    why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
                    with self._lock:
                        self._broken[key] = (time.monotonic() + self.broken_seconds, why)
                    log.warning(
                        "version %s of %s failed to load, not retried for %.0f s: %s",
                        version,
                        name,
                        self.broken_seconds,
                        why,
                    )
                    raise ModelUnavailable(
                        f"version {version} of {name} cannot be loaded ({why}); "
                        f"next attempt in {self.broken_seconds:.0f} s"
                    ) from None
                with self._lock:
                    self._broken.pop(key, None)
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
        tags = self.registry.version_tags(name, version)
        model = LoadedModel(
            name,
            version,
            inner,
            list(inner.columns),
            dict(getattr(inner, "meta", {})),
            self.device,
            skill=tags.get("gate_skill", "unknown"),
        )
        log.info(
            "loaded %s version %s on %s in %.2f s", name, version, self.device, time.perf_counter() - started
        )
        return model

    def no_skill(self, name: str) -> str | None:
        """Why `name` has no champion when the gate refused its challenger — no skill, or a
        rule other than skill (calibration) — else None. Requests for it answer 409 with it."""
        with self._lock:
            return self._refused[name][1] if name in self._refused else None

    def refusal(self, name: str) -> str | None:
        """``no skill`` or ``refused by the gate`` when `no_skill` has a reason, else None."""
        with self._lock:
            return self._refused[name][0] if name in self._refused else None

    def _note_skill(self, name: str, aliases: dict[str, str]) -> None:
        """Remember why `name` has no champion when its challenger was refused for want of
        skill (read from the challenger's ``gate_*`` tags), so requests get that answer."""
        why = None
        challenger = aliases.get("challenger")
        if self.default_alias not in aliases and challenger is not None:
            try:
                tags = self.registry.version_tags(name, challenger)
            except Exception as exc:  # noqa: BLE001 — the registry blinked: the next refresh reads it
                log.warning("could not read the gate's tags of %s version %s: %s", name, challenger, exc)
                with self._lock:
                    self._skill_unread.add(name)
                return
            with self._lock:
                self._skill_unread.discard(name)
            if tags.get("gate_skill") == "none":
                low, high = tags.get("gate_edge_low", "?"), tags.get("gate_edge_high", "?")
                edge = f"{tags.get('gate_edge', '?')} [{low}, {high}]"
                why = (
                    f"model {name} has no {self.default_alias}: the promotion gate found no skill (version "
                    f"{challenger}: log-loss improvement over the base rate {edge} nats/row does not exclude "
                    "zero); ask for a version number to score anyway"
                )
                state = "no skill"
            elif tags.get("gate_decision") == "rejected":  # skill shown, another rule failed (calibration)
                reason = " ".join(tags.get("gate_reason", "no reason recorded").split())[:300]
                why = (
                    f"model {name} has no {self.default_alias}: the promotion gate refused version "
                    f"{challenger} ({reason}); ask for a version number to score anyway"
                )
                state = "refused by the gate"
        with self._lock:
            if why is None:
                self._refused.pop(name, None)
            else:
                self._refused[name] = (state, why)

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

    def is_loaded(self, name: str, version: str) -> bool:
        with self._lock:
            return (name, version) in self._loaded

    # ------------------------------------------------------------ following MLflow
    def refresh(self, default_only: bool = False) -> list[tuple[str, str, str | None, str | None]]:
        """Read every followed model's aliases; load a newly pointed-to default-alias version,
        then publish the new alias table. Returns the changes (name, alias, old, new).

        `default_only` reads just the default alias (one light MLflow query per model instead
        of the whole registered model with every version — 5.7 vs 15 ms here): what live
        scoring needs each cycle; the other aliases keep their last read values."""
        changes = []
        errors = []
        bulk: dict[str, dict[str, str]] | None = None
        if not default_only and len(self.names) > 1:
            try:  # every followed model's aliases in one query (a matrix serves a dozen or more)
                bulk = self.registry.aliases_of(self.names)
            except Exception as exc:  # noqa: BLE001 - MLflow down: keep serving what we have
                self.registry_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
                log.warning("could not read the models' aliases: %s", self.registry_error)
                return changes
        for name in self.names:
            current = self.aliases(name)
            try:
                if bulk is not None and name in bulk:
                    fresh = bulk[name]
                elif default_only:
                    version = self.registry.alias_version(name, self.default_alias)
                    fresh = {k: v for k, v in current.items() if k != self.default_alias}
                    if version is not None:
                        fresh[self.default_alias] = version
                else:
                    fresh = self.registry.aliases(name)
            except Exception as exc:  # noqa: BLE001 - MLflow down: keep serving what we have
                errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")
                log.warning("could not read aliases of %s: %s", name, errors[-1])
                continue
            with self._lock:
                unread = name in self._skill_unread
            if fresh == current and not unread:
                continue
            if fresh == current:  # only the gate's tags are still to be read
                self._note_skill(name, fresh)
                continue
            target = fresh.get(self.default_alias)
            if target is not None and target != current.get(self.default_alias):
                try:
                    self.get(name, target)  # warm before switching: nobody waits on the load
                except ModelUnavailable:
                    pass  # marked broken: requests for it answer 503 naming it until it loads
            with self._lock:
                self._aliases[name] = fresh
            self._note_skill(name, fresh)
            for alias in sorted(set(fresh) | set(current)):
                if fresh.get(alias) != current.get(alias):
                    changes.append((name, alias, current.get(alias), fresh.get(alias)))
                    self.changes.append(
                        (time.time(), name, alias, current.get(alias), fresh.get(alias) or "")
                    )
                    log.info("%s: alias %s %s -> %s", name, alias, current.get(alias), fresh.get(alias))
        self.registry_error = errors[0] if errors else None
        return changes
