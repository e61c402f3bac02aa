"""Per-symbol fan-out of ingest and featurize on a Prefect task runner: threads in this process
by default, or Dask (prefect-dask) — a LocalCluster started for the run, or an existing
cluster's scheduler address — so the symbols run on several cores or machines.

    from flows.fanout import featurize_fanout_flow
    featurize_fanout_flow(runner="dask", workers=4)                         # LocalCluster
    featurize_fanout_flow(runner="dask", dask_address="tcp://10.0.0.5:8786")  # a running cluster

Featurize keeps its all-or-nothing rule (every symbol is computed, then all are written); in
ingest each symbol is all-or-nothing on its own (its series are fetched and validated before
any is written), since workers write independently. Training fans out per base learner, not per
symbol (one model learns from all symbols together): each learner's Optuna study is a task,
then the stack is fitted once with the studies' best parameters. Use a PostgreSQL
``tune.storage`` for it — several processes writing one SQLite file lock each other.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import publish_reports
from pipelines import featurize, train
from pipelines.bar_store import BarStore
from pipelines.config import load_params
from pipelines.ingest import SeriesReport, history
from pipelines.tune import ensure_storage

Runner = Literal["threads", "dask"]


def task_runner(runner: Runner = "threads", workers: int = 2, dask_address: str | None = None) -> Any:
    """The task runner for a fan-out: threads, a Dask LocalCluster of `workers` processes, or
    the Dask cluster at `dask_address`."""
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
        )
    return ThreadPoolTaskRunner(max_workers=workers)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def ingest_symbol(params: Any, symbol: str) -> list[SeriesReport]:
    """Every configured timeframe of one symbol, fetched and validated, then written."""
    return history(params, symbols=[symbol])


@task(cache_policy=NO_CACHE)
def featurize_symbol(params: Any, symbol: str) -> tuple[Any, list[str], float]:
    return featurize.featurize_one(params.data, params.features, params.labels, symbol)


def _fanout(name: str, body: Any, runner: Runner, workers: int, dask_address: str | None) -> Any:
    return flow(name=name, task_runner=task_runner(runner, workers, dask_address), log_prints=True)(body)


def _ingest_body(params_path: str, profile: str | None) -> list[SeriesReport]:
    data = load_params(params_path, profile).data
    futures = ingest_symbol.map([data] * len(data.symbols), list(data.symbols))
    reports = [r for f in futures for r in f.result()]
    written = sum(r.written for r in reports)
    publish_reports(reports, "ingest-history", f"{written} rows written over {len(data.symbols)} symbols")
    return reports


def _featurize_body(params_path: str, profile: str | None) -> dict[str, int]:
    params = load_params(params_path, profile)
    symbols = list(params.data.symbols)
    data_md5 = BarStore(params.data.root).content_md5()  # before reading: lineage names what was read
    futures = featurize_symbol.map([params] * len(symbols), symbols)
    results = dict(zip(symbols, (f.result() for f in futures), strict=True))  # all, then write
    rows = featurize.write_outputs(
        results, params.features, params.labels, params.outputs / "featurize", data_md5
    )
    get_run_logger().info("featurize: %s", rows)
    return rows


@task(cache_policy=NO_CACHE)
def tune_learner(params: Any, learner: str) -> dict[str, Any]:
    """One base learner's Optuna study (resumes; a no-op when it already has its trials)."""
    data = train.load_training_data(params.outputs / "featurize", params.labels.kind)
    return train.tune_learners(
        data,
        params.models,
        params.tune,
        params.labels.horizon,
        params.registry.tracking_uri,
        learners=[learner],
    )


def _train_body(params_path: str, profile: str | None) -> dict[str, Any]:
    params = load_params(params_path, profile, {"tune": {"enabled": True}})
    learners = [name for name in params.models.learners if params.tune.spaces.get(name)]
    if not learners:
        get_run_logger().warning(
            "no learner of %s has a search space in tune.spaces: nothing to tune", params.models.learners
        )
    if learners:  # the learners' studies start side by side: create the storage's schema first
        ensure_storage(params.tune.storage)
    futures = tune_learner.map([params] * len(learners), learners)
    best = {k: v for f in futures for k, v in f.result().items()}
    bundle = train.run(params)  # the studies are complete: their best parameters, no new trials
    get_run_logger().info("train: tuned %s; out of fold %s", best, bundle["oof_scores"])
    return {"tuned": bundle["tuned"], "oof_scores": bundle["oof_scores"], "train_rows": bundle["train_rows"]}


@flow(name="train-fanout", log_prints=True)
def train_fanout_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    runner: Runner = "threads",
    workers: int = 2,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Tune each base learner's study as its own task (threads or Dask), then train the stack."""
    return _fanout("train-learners", _train_body, runner, workers, dask_address)(params_path, profile)


@flow(name="ingest-history-fanout", log_prints=True)
def ingest_fanout_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    runner: Runner = "threads",
    workers: int = 2,
    dask_address: str | None = None,
) -> list[SeriesReport]:
    """Ingest history with one task per symbol on threads or Dask."""
    return _fanout("ingest-history-symbols", _ingest_body, runner, workers, dask_address)(
        params_path, profile
    )


@flow(name="featurize-fanout", log_prints=True)
def featurize_fanout_flow(
    params_path: str = "params.yaml",
    profile: str | None = None,
    runner: Runner = "threads",
    workers: int = 2,
    dask_address: str | None = None,
) -> dict[str, int]:
    """Featurize with one task per symbol on threads or Dask; written once all are done."""
    return _fanout("featurize-symbols", _featurize_body, runner, workers, dask_address)(params_path, profile)
