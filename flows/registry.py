"""Prefect flows ``promote`` and ``rollback``: orchestration only, the work is in
`pipelines.register.gate` and `pipelines.registry.Registry.rollback`.

* ``promote`` — re-runs the promotion gate for a model's current challenger on the holdout rows
  of the featurized data; ``champion`` moves only if the challenger wins out of sample.
* ``rollback`` — moves ``champion`` back to the previous champion (or a named version) and
  records why; services and live scoring follow within their refresh interval.

Both publish a markdown artifact with the decision.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from pipelines.config import load_params
from pipelines.register import gate, gate_summary
from pipelines.registry import Registry, model_name


def _name(params: Any, name: str | None) -> str:
    if name:
        return name
    reg = params.registry
    return model_name(
        reg.name_prefix,
        reg.symbol_group,
        params.features.base_timeframe,
        params.labels.kind,
        params.labels.horizon,
    )


@flow(name="promote", log_prints=True)
def promote_flow(
    params_path: str = "params.yaml", profile: str | None = None, name: str | None = None
) -> dict:
    """Gate `name`'s challenger against its champion (default name: the model params.yaml trains).

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        name: registered model name, e.g. ``mt5prob-fx-M5-direction-h12``; empty for the one
            params.yaml trains.
    """
    params = load_params(params_path, profile)
    model = _name(params, name)
    decision = gate(params, model)
    summary = gate_summary(model, str(decision.challenger), decision)
    get_run_logger().info("%s", summary)
    create_markdown_artifact(
        key="promote", markdown="\n\n".join(line.strip() for line in summary.splitlines())
    )
    return {
        "name": model,
        "version": decision.challenger,
        "promoted": decision.promoted,
        "reason": decision.reason,
        "skill": "demonstrated" if decision.has_skill else "none",
        "edge": decision.skill.as_dict(),
    }


@flow(name="rollback", log_prints=True)
def rollback_flow(
    name: str | None = None,
    to: str | None = None,
    reason: str = "rollback from the Prefect UI",
    params_path: str = "params.yaml",
    profile: str | None = None,
) -> dict:
    """Move `champion` of `name` back to the previous champion, or to version `to`.

    Args:
        name: registered model name; empty for the one params.yaml trains.
        to: version number to make champion; empty for the previous champion.
        reason: why (recorded on both versions in MLflow).
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
    """
    params = load_params(params_path, profile)
    model = _name(params, name)
    old, new = Registry(params.registry.tracking_uri).rollback(model, to, reason, actor="prefect:rollback")
    get_run_logger().info("%s: champion %s -> %s (%s)", model, old, new, reason)
    create_markdown_artifact(key="rollback", markdown=f"**{model}**: champion {old} → {new} ({reason})")
    return {"name": model, "from": old, "to": new, "reason": reason}
