"""Prefect flow ``train-matrix``: every cell of the probability matrix (``matrix.cells`` in
params.yaml) featurized, trained, evaluated, registered as its own MLflow model and gated on its
own — the cells fanned out over a task runner (threads by default, Dask for several processes or
machines: `train_matrix`). One flow-run artifact, ``matrix``, shows every cell's holdout figures
(log loss against the base rate's, the edge with its 95 % interval, ECE) and the gate's decision.

A cell that fails does not stop the others: the run finishes them, publishes the table with the
failure named, then fails. Orchestration only: each cell runs the steps of `flows.train`.

    from flows.matrix import train_matrix
    train_matrix(profile="fast", workers=2)                     # threads in this process
    train_matrix(runner="dask", workers=2)                      # a Dask LocalCluster of processes
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fanout import Runner, task_runner
from flows.train import build_outputs, evaluate_task, featurize_task, register_task, train_task
from pipelines import evaluate
from pipelines.config import Params, ParamsError, cell_params, load_params
from pipelines.tune import ensure_storage


class MatrixFailed(RuntimeError):
    """At least one cell could not be built (the others were; the artifact names it)."""


@task(cache_policy=NO_CACHE, task_run_name="cell {cell_id}")
def cell_task(params: Params, cell_id: str) -> dict[str, Any]:
    """One cell: featurize → train → evaluate into ``outputs/cells/<id>`` (swapped in whole),
    then registered and gated; its holdout headline, the gate's decision and its wall time."""
    cell = cell_params(params, cell_id)
    started = time.perf_counter()
    _, metrics = build_outputs(cell, featurize_task.fn, train_task.fn, evaluate_task.fn)
    registration = register_task.fn(cell)
    return {
        "cell": cell_id,
        "seconds": time.perf_counter() - started,
        "headline": evaluate.headline(metrics),
        "base_rate_log_loss": float(metrics["registered"]["base_rate_log_loss"]),
        **registration,
    }


def matrix_markdown(results: list[dict[str, Any]], failed: dict[str, str]) -> str:
    """The matrix of holdout figures and gate decisions as a markdown table, one row per cell."""
    lines = [
        "| cell | model | holdout rows | log loss | base rate | edge [95 %] nats/row | ECE | gate | s |",
        "|---|---|---:|---:|---:|---|---:|---|---:|",
    ]
    for r in sorted(results, key=lambda r: r["cell"]):
        h = r["headline"]
        gate = ("promoted" if r["promoted"] else "not promoted") + f": {r['reason']}"
        lines.append(
            f"| {r['cell']} | {r['name']} v{r['version']} | {h['rows']:,} | {h['log_loss']:.5f} | "
            f"{r['base_rate_log_loss']:.5f} | {h['edge']:+.5f} "
            f"[{h['edge_low']:+.5f}, {h['edge_high']:+.5f}] | "
            f"{h['ece']:.4f} | {gate} | {r['seconds']:.0f} |"
        )
    for cell, error in sorted(failed.items()):
        lines.append(f"| {cell} | — | | | | | | FAILED: {error} | |")
    return "\n".join(lines)


def _tuning_storages(params: Params, chosen: list[str]) -> set[str]:
    """The Optuna storages of the `chosen` cells that tune (a cell whose settings do not
    resolve is left to its own task, which reports it)."""
    out = set()
    for cell_id in chosen:
        try:
            cp = cell_params(params, cell_id)
        except ParamsError:
            continue
        if cp.tune.enabled and cp.tune.storage:
            out.add(cp.tune.storage)
    return out


def _matrix_body(
    params_path: str = "params.yaml",
    profile: str | None = None,
    cells: list[str] | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate, register and gate every cell of the matrix (two cells at a time).

    Args:
        params_path: params.yaml to read (relative to the serving process's working directory).
        profile: a profile of params.yaml merged over it, e.g. ``fast``; empty for none.
        cells: cell ids to build (e.g. ``fx-H1-direction-h4``); empty for every cell of ``matrix.cells``.
        trials: Optuna trials per base learner; empty for ``tune.n_trials``.
    """
    params = load_params(
        params_path, profile, {"tune": {"enabled": True, "n_trials": trials}} if trials else None
    )
    chosen = list(cells or params.matrix.cells)
    for cell_id in chosen:
        params.matrix.cell(cell_id)  # an unknown cell stops the run before any work, naming the nearest
    for storage in _tuning_storages(params, chosen):  # cells tuning side by side must not race to
        ensure_storage(storage)  # create the storage's schema
    started = time.perf_counter()
    futures = cell_task.map([params] * len(chosen), chosen)
    results, failed = [], {}
    for cell_id, future in zip(chosen, futures, strict=True):
        try:
            results.append(future.result())
        except Exception as exc:  # one cell's failure does not hide the others'
            failed[cell_id] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    wall = time.perf_counter() - started
    create_markdown_artifact(
        key="matrix",
        markdown=f"Probability matrix: {len(results)} cell(s) built, {len(failed)} failed, {wall:.0f} s\n\n"
        + matrix_markdown(results, failed),
        description="holdout figures and the gate's decision per cell",
    )
    log = get_run_logger()
    for r in sorted(results, key=lambda r: r["cell"]):
        log.info("%s: %s v%s %s in %.0f s", r["cell"], r["name"], r["version"], r["reason"], r["seconds"])
    if failed:
        raise MatrixFailed(
            f"{len(failed)} cell(s) failed: " + "; ".join(f"{c}: {e}" for c, e in failed.items())
        )
    return {"cells": results, "seconds": wall}


train_matrix_flow = flow(
    name="train-matrix", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2)
)(_matrix_body)


def train_matrix(
    params_path: str = "params.yaml",
    profile: str | None = None,
    cells: list[str] | None = None,
    trials: int | None = None,
    runner: Runner = "threads",
    workers: int = 2,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """`train_matrix_flow` on a task runner of `workers` (1: one cell after the other)."""
    chosen = train_matrix_flow.with_options(task_runner=task_runner(runner, workers, dask_address))
    return chosen(params_path=params_path, profile=profile, cells=cells, trials=trials)
