"""The MLflow adapter: log a trained predictor as one pyfunc model, register it, and gate
promotion from ``challenger`` to ``champion``.

Naming: ``<prefix>-<symbol group>-<timeframe>-<label kind>-h<horizon>``. A new version gets
alias ``challenger``. `promotion_gate` scores challenger and champion on the same out-of-sample
rows, asks the pure decision (`models.gate.decide`: the rules live there, not here), writes
the decision and its numbers as tags on the challenger version and, when it says so, moves
``champion``; the replaced champion keeps alias ``previous_champion``.

Every change of ``champion`` (promotion or rollback) goes through `Registry.set_champion`,
which keeps the order of champions in the registered model's ``champion_history`` tag (a
JSON list of versions, newest last) and writes who, when and why on the version. `rollback`
steps back through that history (or jumps to a named version).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.gaps import MarketHours
from features.spec import FeatureSpec, Windows
from models.gate import GateDecision, decide


def model_name(prefix: str, symbol_group: str, timeframe: str, label_kind: str, horizon: int) -> str:
    return f"{prefix}-{symbol_group}-{timeframe}-{label_kind}-h{horizon}"


class ProbabilityModel:
    """The whole predictor (feature columns, base learners, stacker or ensemble, calibrator)
    behind MLflow's pyfunc interface: a frame with the recorded feature columns in → a frame
    with ``p_up`` (probability of label 1) out — for three-class (up/flat/down) models
    ``p_down``, ``p_flat`` and ``p_up`` (`PROBABILITY_COLUMNS`, `probabilities_of`)."""

    def __init__(self, predictor: Any, columns: list[str], meta: dict[str, Any] | None = None) -> None:
        self.predictor = predictor
        self.columns = list(columns)
        # what serving needs to score from raw bars: the feature spec (features.spec.FeatureSpec
        # as a dict), base timeframe, label kind, horizon, symbols
        self.meta = dict(meta or {})

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label 1) for a float matrix whose columns are `columns`, in that order; (n, 3)
        [P(down), P(flat), P(up)] for a three-class model."""
        return np.asarray(self.predictor.predict_proba(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks feature columns {missing[:5]} (expects {len(self.columns)})")
        X = model_input[self.columns].to_numpy(np.float32)
        p = np.asarray(self.predictor.predict_proba(X), dtype=np.float64)
        if p.ndim == 2:
            return pd.DataFrame(p, columns=list(PROBABILITY_COLUMNS))
        return pd.DataFrame({"p_up": p})


PROBABILITY_COLUMNS = ("p_down", "p_flat", "p_up")  # a three-class pyfunc's output, in class order


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    """A pyfunc's output as the probabilities `models.gate` takes: P(label 1) per row, or
    (n, 3) class probabilities when it has the three-class columns."""
    if all(c in frame.columns for c in PROBABILITY_COLUMNS):
        return frame[list(PROBABILITY_COLUMNS)].to_numpy(np.float64)
    return frame["p_up"].to_numpy(np.float64)


def subscription_model_name(params: Any, sub: Any) -> str:
    """The registered model serving subscription `sub` (symbol, timeframe, horizon, label
    kind): the matrix cell's, named for the first symbol group holding the symbol
    (``matrix.groups``), ``registry.symbol_group`` for a symbol in none."""
    reg = params.registry
    group = params.matrix.group_of(sub.symbol) or reg.symbol_group
    return model_name(reg.name_prefix, group, sub.timeframe, sub.label_kind, sub.horizon)


def served_model_names(params: Any) -> list[str]:
    """``serving.models``, or the model this params file trains and registers followed by the
    model of every cell of the matrix (``matrix.cells``) whose group has a symbol and whose
    timeframe is ingested (``data.symbols``, ``data.timeframes``)."""
    return list(catalog(params))


def served_subscriptions(params: Any) -> list[Any]:
    """Every (symbol, cell) the matrix serves (`catalog`: each served cell's model and its
    ingested symbols) as a `pipelines.store.Subscription`, in catalog order, symbols in group
    order — what a tenant following the whole matrix follows."""
    from pipelines.store import Subscription

    return [
        Subscription(symbol, m["timeframe"], m["horizon"], m["label_kind"])
        for m in catalog(params).values()
        if m["cell"] is not None
        for symbol in m["symbols"]
    ]


def catalog(params: Any) -> dict[str, dict[str, Any]]:
    """What each served model serves, by name: ``cell`` (its matrix cell id, None for a model
    outside the matrix), ``symbols``, ``timeframe``, ``horizon`` (bars of that timeframe) and
    ``label_kind``. Read from the matrix for a cell's model, from the name otherwise
    (``<prefix>-<group>-<timeframe>-<label kind>-h<horizon>``; None where it does not say)."""
    reg = params.registry
    out: dict[str, dict[str, Any]] = {}
    if not params.serving.models:
        top = model_name(
            reg.name_prefix,
            reg.symbol_group,
            params.features.base_timeframe,
            params.labels.kind,
            params.labels.horizon,
        )
        out[top] = {
            "cell": None,
            "symbols": list(params.data.symbols),
            "timeframe": params.features.base_timeframe,
            "horizon": params.labels.horizon,
            "label_kind": params.labels.kind,
        }
    cells = {}
    for cell in params.matrix.all():
        symbols = [s for s in params.matrix.groups[cell.group] if s in params.data.symbols]
        if symbols and cell.timeframe in params.data.timeframes:
            name = model_name(reg.name_prefix, cell.group, cell.timeframe, cell.label_kind, cell.horizon)
            cells[name] = {
                "cell": cell.id,
                "symbols": symbols,
                "timeframe": cell.timeframe,
                "horizon": cell.horizon,
                "label_kind": cell.label_kind,
            }
    if params.serving.models:
        return {
            n: cells.get(n) or _from_name(n, reg.name_prefix, params.matrix.groups)
            for n in params.serving.models
        }
    for name, info in cells.items():
        if name in out:
            out[name]["cell"] = info["cell"]
            out[name]["symbols"] = info["symbols"]
        else:
            out[name] = info
    return out


def _from_name(name: str, prefix: str, groups: dict[str, Any]) -> dict[str, Any]:
    """What a served model outside the matrix serves, read from its name: ``<prefix>-<cell id>``
    (`pipelines.config.Cell.parse`); None where the name does not say."""
    from pipelines.config import Cell, ParamsError

    try:
        cell = Cell.parse(name.removeprefix(f"{prefix}-"))
    except ParamsError:
        return {"cell": None, "symbols": None, "timeframe": None, "horizon": None, "label_kind": None}
    symbols = groups.get(cell.group)
    return {
        "cell": None,
        "symbols": list(symbols) if symbols else None,
        "timeframe": cell.timeframe,
        "horizon": cell.horizon,
        "label_kind": cell.label_kind,
    }


def feature_spec_from_meta(meta: dict[str, Any]) -> FeatureSpec | None:
    """The `FeatureSpec` a registered model was trained with (None for models registered
    before the spec was recorded)."""
    spec = (meta or {}).get("feature_spec")
    if not spec:
        return None
    windows = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["windows"].items()}
    hours = spec.get("market_hours")  # absent: registered before holes were handled (defaults)
    return FeatureSpec(
        spec["base_timeframe"],
        tuple(spec["higher_timeframes"]),
        tuple(spec["families"]),
        tuple(spec["htf_families"]),
        Windows(**windows),
        MarketHours(
            hours["weekly_close"],
            hours["weekly_open"],
            tuple(tuple(b) for b in hours["daily_breaks"]),
            tuple(hours["holidays"]),
            hours["enabled"],
        )
        if hours
        else MarketHours(),
    )


def _pyfunc_class() -> type:
    import mlflow.pyfunc

    return type("MT5ProbabilityModel", (ProbabilityModel, mlflow.pyfunc.PythonModel), {})


def lineage(repo: Path, params_sections: dict[str, Any], data_md5: str | None = None) -> dict[str, str]:
    """git commit, the data's content hash and a hash of the params that shaped the model.

    ``data_dvc_md5`` is `data_md5` — the DVC directory hash of the bar store when featurize
    read it (`BarStore.content_md5`, recorded in the featurize manifest), so a model retrained
    on newer live bars names *its* data — or, for outputs featurized before that was recorded,
    the hash in ``data.dvc``. ``data_dvc_committed`` says whether ``data.dvc`` names that same
    content (``dvc checkout`` restores it) or not (the data is newer than the commit: ``dvc
    commit data.dvc`` records it)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    committed = "unknown"
    dvc_file = repo / "data.dvc"
    if dvc_file.is_file():
        for line in dvc_file.read_text().splitlines():
            if line.strip().startswith("- md5:"):
                committed = line.split(":", 1)[1].strip()
    data_hash = data_md5 if data_md5 and data_md5 != "unknown" else committed
    params_hash = hashlib.sha256(
        json.dumps(params_sections, sort_keys=True, default=str).encode()
    ).hexdigest()
    return {
        "git_commit": commit,
        "data_dvc_md5": data_hash,
        "data_dvc_committed": str(data_hash == committed).lower(),
        "params_sha256": params_hash[:16],
    }


class TrialLogger:
    """Records Optuna trials as nested MLflow runs under one parent run per study."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment("tuning")
        self.study_name = study_name

    def __enter__(self) -> TrialLogger:
        self._parent = self._mlflow.start_run(run_name=f"tune-{self.study_name}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._mlflow.end_run()

    def on_trial(self, study: Any, trial: Any) -> None:
        with self._mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            self._mlflow.log_params(trial.params)
            self._mlflow.set_tags({"state": trial.state.name, "study": self.study_name})
            if trial.value is not None:
                self._mlflow.log_metric("cv_log_loss", float(trial.value))


class Registry:
    """MLflow tracking + model registry at `tracking_uri` (SQLite file or an mlflow server)."""

    def __init__(self, tracking_uri: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def log_and_register(
        self,
        name: str,
        predictor: Any,
        columns: list[str],
        example: pd.DataFrame,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
        meta: dict[str, Any] | None = None,
    ) -> str:
        """One MLflow run with params, metrics, artifacts and the pyfunc model; returns the new
        registered version, aliased ``challenger``."""
        from mlflow.models import infer_signature

        mlflow = self._mlflow
        mlflow.set_experiment(name)
        model = _pyfunc_class()(predictor, columns, meta)
        with mlflow.start_run(run_name=f"train-{tags.get('git_commit', '')[:8]}") as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
            mlflow.set_tags(tags)
            for path in artifacts:
                mlflow.log_artifact(str(path))
            output = model.predict(None, example)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=model,
                signature=infer_signature(example, output),
                input_example=example,
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        self.client.set_model_version_tag(name, version, "run_id", run.info.run_id)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)
        self.client.set_registered_model_alias(name, "challenger", version)
        return version

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `alias` points at; None when the model or the alias does not exist.
        Any other failure (MLflow unreachable) raises: it is not an answer."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        """The tags of one registered version (its gate decision, lineage, champion history)."""
        return dict(self.client.get_model_version(name, str(version)).tags or {})

    def load(self, name: str, ref: str) -> Any:
        """``ref`` is an alias (``champion``) or a version number."""
        uri = f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"
        return self._mlflow.pyfunc.load_model(uri)

    def promotion_gate(
        self,
        name: str,
        X: pd.DataFrame,
        y: np.ndarray,
        max_ece: float,
        horizon: int = 1,
        groups: np.ndarray | None = None,
        *,
        times: np.ndarray | None = None,
        block_seconds: int = 86_400,
        ece_ceiling: float = 0.05,
        level: float = 0.95,
    ) -> GateDecision:
        """Score challenger and champion on the same rows, decide with `models.gate.decide`
        (`max_ece` and its `ece_ceiling`, label overlap `horizon` within each of `groups`, rows
        in time order, bootstrap blocks of `block_seconds` of `times` at confidence `level`),
        record the decision as ``gate_*`` tags on the challenger and promote when it says so."""
        challenger = self.alias_version(name, "challenger")
        if challenger is None:
            raise ValueError(f"{name} has no challenger to gate")
        champion = self.alias_version(name, "champion")
        p_new = probabilities_of(self.load(name, challenger).predict(X))
        p_old = None
        if champion is not None and champion != challenger:
            p_old = probabilities_of(self.load(name, champion).predict(X))
        decision = decide(
            y,
            p_new,
            p_old,
            max_ece=max_ece,
            ece_ceiling=ece_ceiling,
            horizon=horizon,
            groups=groups,
            times=times,
            block_seconds=block_seconds,
            level=level,
        )
        decision = replace(decision, challenger=challenger, champion=champion)
        for key, value in decision.tags().items():
            self.client.set_model_version_tag(name, challenger, key, value)
        if decision.promoted:
            self.set_champion(
                name, challenger, reason=f"promotion gate: {decision.reason}", actor="promotion-gate"
            )
        return decision

    def describe(self, name: str, version: str, text: str) -> None:
        """Set the registered model's and the version's description (the MLflow UI shows both)."""
        self.client.update_registered_model(name, description=text)
        self.client.update_model_version(name, version, description=text)

    def champion_history(self, name: str) -> list[str]:
        """Versions that were champion, oldest first (current champion last)."""
        tags = self.client.get_registered_model(name).tags
        history = json.loads(tags.get("champion_history", "[]"))
        current = self.alias_version(name, "champion")
        if current is not None and (not history or history[-1] != current):
            history.append(current)  # aliases moved outside this class: trust the alias
        return [str(v) for v in history]

    def set_champion(
        self, name: str, version: str, reason: str, actor: str, history: list[str] | None = None
    ) -> None:
        """Point ``champion`` at `version`, keep ``previous_champion`` and the history tag in
        step, and record who/when/why on the version."""
        version = str(version)
        self.require_version(name, version)
        if history is None:
            history = [v for v in self.champion_history(name) if v != version] + [version]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        tags = self.client.get_model_version(name, version).tags
        for stale in ("demoted_at", "demoted_reason"):  # champion again: its demotion is history
            if stale in tags:
                self.client.delete_model_version_tag(name, version, stale)
        self.client.set_model_version_tag(name, version, "champion_since", now)
        self.client.set_model_version_tag(name, version, "champion_reason", reason[:500])
        self.client.set_model_version_tag(name, version, "champion_set_by", actor)
        self.client.set_registered_model_tag(name, "champion_history", json.dumps(history[-50:]))
        if len(history) >= 2:
            self.client.set_registered_model_alias(name, "previous_champion", history[-2])
        else:
            try:
                self.client.delete_registered_model_alias(name, "previous_champion")
            except Exception:  # noqa: BLE001 - no such alias
                pass
        self.client.set_registered_model_alias(name, "champion", version)

    def rollback(self, name: str, to: str | None, reason: str, actor: str = "rollback") -> tuple[str, str]:
        """Move ``champion`` back to the previous champion (or to version `to`); returns
        (old, new) versions. The demoted version is tagged with why."""
        history = self.champion_history(name)
        if not history:
            raise ValueError(f"{name} has no champion to roll back")
        current = history[-1]
        if to is None:
            if len(history) < 2:
                raise ValueError(f"{name}: no previous champion to roll back to; pass --to VERSION")
            new_history = history[:-1]
        else:
            to = str(to)
            if to == current:
                raise ValueError(f"{name}: version {to} is already the champion")
            self.require_version(name, to)
            new_history = [v for v in history if v != to] + [to]
        target = new_history[-1]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.set_model_version_tag(name, current, "demoted_at", now)
        self.client.set_model_version_tag(
            name, current, "demoted_reason", f"rollback to {target}: {reason}"[:500]
        )
        self.set_champion(
            name, target, reason=f"rollback from {current}: {reason}", actor=actor, history=new_history
        )
        return current, target

    def require_version(self, name: str, version: str) -> None:
        """ValueError naming the versions that exist when `version` is not one of them; any
        other failure (the registry's database unreachable) is raised as it is."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            try:
                known = sorted(int(v.version) for v in self.client.search_model_versions(f"name='{name}'"))
            except MlflowException:
                known = []
            raise ValueError(f"{name} has no version {version!r} (versions: {known or 'none'})") from exc

    def aliases_of(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """alias → version of each of `names` in one paged search (not one query per model: a
        service following a whole matrix re-reads them every few seconds); {} for a name not
        registered yet."""
        import os.path
        import re

        # a LIKE on the names' common prefix (cut before a quote or wildcard); `_` in it only
        # widens the match, which the name check below narrows again
        prefix = re.split(r"['%\\]", os.path.commonprefix(list(names)))[0]
        wanted = set(names)
        out: dict[str, dict[str, str]] = {n: {} for n in names}
        token = None
        while True:
            page = self.client.search_registered_models(
                filter_string=f"name LIKE '{prefix}%'" if prefix else None, max_results=1000, page_token=token
            )
            for model in page:
                if model.name in wanted:
                    out[model.name] = {str(k): str(v) for k, v in (model.aliases or {}).items()}
            token = page.token
            if not token:
                return out

    def aliases(self, name: str) -> dict[str, str]:
        """alias → version of one registered model ({} when no model has that name yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {str(k): str(v) for k, v in (model.aliases or {}).items()}
