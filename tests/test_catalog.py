"""The served catalog of the probability matrix: which model serves which cell, and what the
service's readiness makes of cells not built yet (real MLflow store, real results store)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from models.base_learners import LogisticLearner
from pipelines.config import load_params
from pipelines.model_cache import ModelCache
from pipelines.registry import Registry, catalog, served_model_names, served_subscriptions
from pipelines.store import ResultsStore
from serving.health import Health


def test_the_catalog_serves_the_trained_model_first_then_every_cell():
    params = load_params("params.yaml", "fast")
    names = served_model_names(params)
    assert names[0] == "mt5prob-fx-M5-direction-h12" and len(names) == len(params.matrix.cells) == 14
    cat = catalog(params)
    assert cat["mt5prob-fx-H1-triple_barrier-h24"] == {
        "cell": "fx-H1-triple_barrier-h24",
        "symbols": ["EURUSD", "XAUUSD"],  # the group's symbols that are ingested
        "timeframe": "H1",
        "horizon": 24,
        "label_kind": "triple_barrier",
    }
    assert cat[names[0]]["cell"] == "fx-M5-direction-h12"
    # a cell whose timeframe is not ingested is not served
    fewer = load_params("params.yaml", "fast", {"data": {"timeframes": ["M5", "M15"]}})
    assert not any("-H1-" in n for n in served_model_names(fewer))
    # following the whole matrix: every served cell for each of its ingested symbols
    subs = served_subscriptions(params)
    assert len(subs) == 14 * 2 and len(set(subs)) == 28
    assert {s.symbol for s in subs} == {"EURUSD", "XAUUSD"}
    assert (subs[0].symbol, subs[0].timeframe, subs[0].horizon, subs[0].label_kind) == (
        "EURUSD", "M5", 12, "direction"
    )  # fmt: skip
    assert not any(s.timeframe == "H1" for s in served_subscriptions(fewer))


def _register(registry: Registry, name: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + rng.normal(size=400) > 0).astype(float)
    columns = ["a", "b", "c"]
    learner = LogisticLearner(C=1.0).fit(X, y)
    example = pd.DataFrame(X[:3], columns=columns)
    version = registry.log_and_register(name, learner, columns, example, {}, {}, {"git_commit": "t"}, [])
    registry.set_champion(name, version, reason="test", actor="test")


def test_readiness_ignores_cells_not_built_and_loads_each_champion_once(tmp_path, caplog):
    """With more cells served than the LRU holds, a check every second must not reload every
    champion every second: each (model, version) is loaded once by the checks. A served model
    never registered is not an outage (a cell not trained yet), but none registered at all is."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri)
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.migrate()
    served = ["m-a", "m-b", "m-unbuilt"]
    models = ModelCache(registry, served, max_loaded=1)
    health = Health(store, models, "champion", 1.0)
    models.refresh()
    assert health.check() == [f"no served model is registered yet ({', '.join(served)}, ...)"]
    _register(registry, "m-a")
    _register(registry, "m-b")
    models.refresh()
    caplog.set_level(logging.INFO, logger="mt5prob")
    assert health.check() == []  # m-unbuilt: not built, not an outage
    assert models.loaded() == [("m-b", "1")]  # the LRU holds one of the two champions
    caplog.clear()
    for _ in range(3):
        assert health.check() == []
    # each (model, version) was verified by loading it once: later checks load nothing, where
    # loading every champion every check would load both, each time, through an LRU of one
    assert not [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    store.close()


def test_a_model_the_gate_refused_for_calibration_is_a_state_not_an_outage(tmp_path):
    """Skill shown but calibration refused: no champion, and — like a model without skill —
    requests for it get the gate's reason (409), /readyz is not failed by it, and its state
    says which rule refused it (before, only "no skill" was a state: a calibration refusal of
    one matrix cell made the whole service unready)."""
    from pipelines.model_cache import NoSkill

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = Registry(uri)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=4000) > 0).astype(float)
    learner = LogisticLearner(C=1.0).fit(X, y)
    columns = ["a", "b", "c"]
    registry.log_and_register(
        "m-cal2", learner, columns, pd.DataFrame(X[:3], columns=columns), {}, {}, {}, []
    )
    times = np.arange(X.shape[0]) * 86_400 // 50
    calibrated = registry.promotion_gate(
        "m-cal2", pd.DataFrame(X, columns=columns), y, max_ece=1e-6, ece_ceiling=1e-6, times=times
    )
    assert not calibrated.promoted and calibrated.has_skill, calibrated.reason
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.migrate()
    models = ModelCache(registry, ["m-cal2"])
    models.refresh()
    assert models.refusal("m-cal2") == "refused by the gate"
    assert "the promotion gate refused version 1 (" in models.no_skill("m-cal2")
    assert Health(store, models, "champion", 1.0).check() == []
    try:
        models.resolve("m-cal2", None)
    except NoSkill as exc:
        assert "ECE" in str(exc), exc
    else:
        raise AssertionError("a refused model's champion was resolved")
    store.close()
