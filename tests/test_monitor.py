"""Monitoring: PSI behaves (stable ≈ 0, shifted ≫ 0.25, missingness counts), the drift check
runs on real featurize outputs and bars, live calibration is computed on matured labels per
model version and tenant, and the monitor flow fails with its artifacts on a breach."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from conftest import small_features

from features.bars import Bars
from features.labels import direction_labels
from models.metrics import psi
from pipelines import featurize, ingest
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import load_params
from pipelines.monitor import check
from pipelines.store import ResultsStore, ScoreRow, Subscription


def test_psi():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, rng.normal(size=2_000)) < 0.02
    assert psi(ref, rng.normal(loc=1.0, size=2_000)) > 0.25
    assert psi(ref, rng.normal(scale=2.0, size=2_000)) > 0.25
    half_missing = rng.normal(size=2_000)
    half_missing[::2] = np.nan
    assert psi(ref, half_missing) > 0.25
    assert np.isnan(psi(ref, np.array([])))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    params = load_params(
        "params.yaml",
        None,
        {
            "data": {
                "root": str(root / "data"),
                "symbols": ["EURUSD"],
                "timeframes": ["M5", "H1"],
                "simulator": {"end": "2024-02-01T00:00:00"},
            },
            "features": small_features("calendar", "session"),
            "outputs": str(root / "outputs"),
            "store": {"url": f"sqlite:///{root / 'results.db'}"},
            "monitor": {
                "min_rows": 100,
                "ece_max": 0.05,
                "live_bars": 2016,
                "state_path": str(root / "monitor-state.json"),
            },
        },
    )
    ingest.history(params.data)
    featurize.run(params.data, params.features, params.labels, params.outputs / "featurize")
    return params


def _results(params, p_of, version="1"):
    """A tenant pinned to its own model `version`, whose scores over the last 600 M5 bars have
    probability p_of(realised up-rate)."""
    store = ResultsStore(params.store.url)
    store.migrate()
    tenant, _ = store.add_tenant(
        f"t{datetime.now(UTC).timestamp()}", [Subscription("EURUSD", "M5", 12)], pins={"m": version}
    )
    frame = BarStore(params.data.root).read(SeriesKey("bars", "EURUSD", "M5"))
    bars = Bars.from_frame(frame, 300)
    y = direction_labels(bars, params.labels.direction_spec())["label"]
    rate = float(np.nanmean(y[-600:]))
    scores = []
    for t in bars.time[-600:]:
        bar = datetime.fromtimestamp(int(t), UTC)
        scores.append(
            ScoreRow(
                "EURUSD",
                "M5",
                bar,
                12,
                "direction",
                "m",
                version,
                p_of(rate),
                False,
                bar + timedelta(minutes=5),
            )
        )
    store.write_scores(scores)
    return store, tenant


END = datetime(2024, 2, 1, tzinfo=UTC)  # the simulated "now" of the world's data


def test_drift_calibration_and_skill_checks(world):
    report = check(world, now=END)
    (row,) = report.drift
    assert row["symbol"] == "EURUSD" and row["live_bars"] == 2016
    assert "calendar" not in row["worst"] and "session" not in row["worst"]
    assert row["max_psi"] < 0.25, row  # a stationary simulator does not drift
    store, tenant = _results(world, lambda rate: rate)  # the realised up-rate: calibrated in the large
    try:
        fair = check(world, store, now=END)
        by_model = next(r for r in fair.calibration if r["by"] == "model")
        assert 500 <= by_model["rows"] <= 600  # the last 12 bars have not matured yet
        assert by_model["ece"] < 0.02
        assert 0.5 < by_model["log_loss"] <= np.log(2) + 0.005  # the entropy of the up-rate
        # calibrated in the large, but it says nothing: the live-skill check names it
        assert fair.breaches and all("no demonstrated skill" in b for b in fair.breaches), fair.breaches
        assert by_model["edge_low"] <= 0 <= by_model["edge_high"]
        assert not any(f.breached for f in fair.findings if f.check.startswith(("stale:", "drift:", "calib")))
        from pipelines.monitor import Alerts
        from pipelines.status import status_lines, status_plots

        view = "\n".join(status_lines(fair, Alerts(world.monitor.state_path)))
        assert "ok    EURUSD M5" in view and "OPEN  skill:model:" in view and "no demonstrated skill" in view
        plots = status_plots(fair)
        assert set(plots) == {"Feature drift (PSI)", "Live reliability over time"}
        assert all(png.startswith(b"\x89PNG") for png in plots.values())
        _results(world, lambda rate: 0.9, version="2")  # a second tenant, overconfident
        bad = check(world, store, now=END)
        assert any("live calibration of tenant" in b for b in bad.breaches)
        assert any(r["by"] == "tenant" and r["key"].startswith(tenant.tenant_id) for r in bad.calibration)
    finally:
        store.close()


def test_status_view_from_the_command_line(world, tmp_path, capsys):
    import yaml

    from pipelines.status import main

    params_file = tmp_path / "params.yaml"
    raw = world.model_dump(mode="json")
    raw["monitor"]["state_path"] = str(tmp_path / "state.json")
    params_file.write_text(yaml.safe_dump(raw))
    assert main(["--params", str(params_file), "silence", "stale:*", "--hours", "2"]) == 0
    code = main(["--params", str(params_file)])
    out = capsys.readouterr().out
    assert code == 1  # judged now: the world's bars stopped in 2024
    for part in (
        "SERIES",
        "STALE EURUSD M5",
        "MODELS",
        "mt5prob-fx-M5-direction-h12",
        "ALERTS",
        "SILENCED stale:*",
    ):
        assert part in out, out
    assert main(["--params", str(params_file), "unsilence", "stale:*"]) == 0
    assert main(["--params", str(params_file), "unsilence", "stale:*"]) == 2


def test_monitor_flow_fails_with_artifacts_on_a_breach(world, prefect_harness, tmp_path):
    import yaml

    from flows.monitor import MonitorBreach, monitor_flow

    params_file = tmp_path / "params.yaml"
    raw = world.model_dump(mode="json")
    raw["monitor"]["psi_max"] = 0.0001  # any drift at all is a breach
    params_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(MonitorBreach, match="feature drift on EURUSD"):
        monitor_flow(params_path=str(params_file), now=END)
    raw["monitor"]["psi_max"] = 10.0
    raw["store"]["url"] = f"sqlite:///{tmp_path / 'empty.db'}"
    params_file.write_text(yaml.safe_dump(raw))
    store = ResultsStore(raw["store"]["url"])
    store.migrate()
    store.close()
    resolved = monitor_flow(params_path=str(params_file), now=END)
    assert resolved["breaches"] == []
    # the operator was told once when drift breached (the first run) and once now it resolved;
    # the live alerts of the first run's store (earlier tests' tenants) close with it: this
    # store scored none of their versions
    assert "resolved drift:EURUSD" in resolved["notified"]
    assert all(
        n.startswith(("resolved drift:", "resolved skill:", "resolved calibration:"))
        for n in resolved["notified"]
    )


def test_breaches_name_the_cells_to_retrain(tmp_path):
    """A model's live calibration or skill breach (per version or per tenant) retrains its
    cell; a drifted symbol every cell of its groups; stale data, lag, the API, a challenger
    worse live, a healthy check and a model outside the matrix retrain nothing."""
    import yaml

    from models.checks import Finding
    from pipelines.monitor import cells_to_retrain

    matrix = {
        "groups": {"fx": ["EURUSD", "GBPUSD"], "metals": ["XAUUSD"], "majors": ["EURUSD"]},
        "cells": {
            "fx-M5-direction-h12": {},
            "fx-H1-triple_barrier-h4": {},
            "metals-M15-up_flat_down-h4": {},
            "majors-H1-direction-h24": {},
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"matrix": matrix}, sort_keys=False))
    params = load_params(tmp_path / "params.yaml")

    def breached(*checks: str, ok: bool = False) -> list[Finding]:
        return [Finding(c, not ok, 1.0, 0.0, c) for c in checks]

    assert cells_to_retrain(breached("calibration:model:mt5prob-fx-H1-triple_barrier-h4:7"), params) == [
        "fx-H1-triple_barrier-h4"
    ]
    assert cells_to_retrain(breached("skill:tenant:3ae40d12:mt5prob-metals-M15-up_flat_down-h4"), params) == [
        "metals-M15-up_flat_down-h4"
    ]
    # EURUSD is in fx and majors: their cells, in matrix order; XAUUSD's metals cell is untouched
    assert cells_to_retrain(breached("drift:EURUSD"), params) == [
        "fx-M5-direction-h12",
        "fx-H1-triple_barrier-h4",
        "majors-H1-direction-h24",
    ]
    nothing = breached(
        "stale:EURUSD:M5",
        "lag:live",
        "api:up",
        "shadow:mt5prob-fx-M5-direction-h12:v8:vs:v7",
        "skill:model:another-model:1",
    ) + breached("drift:XAUUSD", "calibration:model:mt5prob-fx-M5-direction-h12:3", ok=True)
    assert cells_to_retrain(nothing, params) == []


@pytest.mark.slow
def test_the_monitor_flow_retrains_the_cells_a_breach_calls_for(world, prefect_harness, tmp_path):
    """``monitor.retrain_on_breach``: the monitor flow, on EURUSD's drift, retrains the one
    cell whose group holds EURUSD in a ``train-matrix`` subflow — a new registered version, gated
    — and still fails with the breach, saying what it retrained; the other group's cell is not
    touched."""
    import yaml
    from mlflow import MlflowClient

    from flows.monitor import MonitorBreach, monitor_flow

    raw = world.model_dump(mode="json")
    raw["monitor"].update(
        {"psi_max": 0.0001, "retrain_on_breach": True, "state_path": str(tmp_path / "state.json")}
    )
    raw["store"]["url"] = f"sqlite:///{tmp_path / 'results.db'}"  # no live scores: drift alone breaches
    raw["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["models"]["learners"] = ["logistic"]
    raw["tune"]["enabled"] = False
    raw["matrix"] = {
        "groups": {"fx": ["EURUSD"], "metals": ["XAUUSD"]},
        "cells": {"fx-M5-direction-h12": {}, "metals-M5-direction-h12": {}},
    }
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    store = ResultsStore(raw["store"]["url"])
    store.migrate()
    store.close()
    with pytest.raises(MonitorBreach, match=r"feature drift on EURUSD.*; retrained fx-M5-direction-h12$"):
        monitor_flow(params_path=str(params_file), now=END)
    mlflow = MlflowClient(raw["registry"]["tracking_uri"])
    assert {m.name for m in mlflow.search_registered_models()} == {"mt5prob-fx-M5-direction-h12"}
    (version,) = mlflow.search_model_versions("name='mt5prob-fx-M5-direction-h12'")
    assert version.tags["gate_decision"] in ("promoted", "rejected")  # gated like any new version
    assert (world.outputs / "cells" / "fx-M5-direction-h12" / "evaluate" / "metrics.json").is_file()


def _realised_tb(params):
    """The EURUSD M5 bars' realised take-profit-first labels (h12) under params' labels."""
    import dataclasses

    from features.labels import model_target, triple_barrier_labels

    frame = BarStore(params.data.root).read(SeriesKey("bars", "EURUSD", "M5"))
    bars = Bars.from_frame(frame, 300)
    spec = dataclasses.replace(params.labels.triple_barrier_spec(), horizon=12)
    return bars, model_target("triple_barrier", triple_barrier_labels(bars, spec)["label"])


def test_triple_barrier_models_are_judged_on_their_own_labels(world):
    """A triple-barrier model's live probabilities are compared with triple-barrier outcomes,
    not direction ones: probabilities that know the take-profit-first outcome (0.8 / 0.2)
    have exactly −log 0.8 log loss on their own labels."""
    bars, y = _realised_tb(world)
    store = ResultsStore(world.store.url)
    store.migrate()
    tenant, _ = store.add_tenant(
        f"tb{datetime.now(UTC).timestamp()}", [Subscription("EURUSD", "M5", 12, "triple_barrier")]
    )
    name = "mt5prob-fx-M5-triple_barrier-h12"
    rows = []
    for t, label in zip(bars.time[-600:], y[-600:], strict=True):
        bar = datetime.fromtimestamp(int(t), UTC)
        p = 0.5 if np.isnan(label) else 0.8 if label == 1 else 0.2
        rows.append(
            ScoreRow(
                "EURUSD", "M5", bar, 12, "triple_barrier", name, "1", p, True, bar + timedelta(minutes=5)
            )
        )
    store.write_scores(rows)
    try:
        report = check(world, store, now=END)
        model = next(r for r in report.calibration if r["by"] == "model" and r["key"] == f"{name} 1")
        matured = int(np.isfinite(y[-600:]).sum())
        assert model["rows"] == matured and 500 <= matured <= 600
        assert model["log_loss"] == pytest.approx(-np.log(0.8), abs=1e-9)
        assert model["edge_low"] > 0  # skill, on its own labels
        assert not any(f.breached for f in report.findings if f.check == f"skill:model:{name}:1")
    finally:
        store.close()


def test_shadow_scores_compare_the_challenger_with_the_champion_live(world):
    """Shadow rows of a challenger that knows the outcome against a champion at the base rate:
    the challenger is better live (no breach); the other way round it is shown worse live, a
    breach that says not to promote it — on the same matured bars."""
    from features.labels import direction_labels as dl
    from pipelines.store import ShadowRow

    frame = BarStore(world.data.root).read(SeriesKey("bars", "EURUSD", "M5"))
    bars = Bars.from_frame(frame, 300)
    y = dl(bars, world.labels.direction_spec())["label"][-600:]
    rate = float(np.nanmean(y))
    store = ResultsStore(world.store.url)
    store.migrate()
    name = "mt5prob-fx-M5-direction-h12"

    def rows(challenger: str, champion: str, good: str) -> list:
        out = []
        for t, label in zip(bars.time[-600:], y, strict=True):
            bar = datetime.fromtimestamp(int(t), UTC)
            sharp = 0.5 if np.isnan(label) else 0.7 if label == 1 else 0.3
            p = (sharp, rate) if good == "challenger" else (rate, sharp)
            out.append(
                ShadowRow(
                    "EURUSD",
                    "M5",
                    bar,
                    12,
                    "direction",
                    name,
                    challenger,
                    champion,
                    *p,
                    bar + timedelta(minutes=5),
                )
            )
        return out

    try:
        assert store.write_shadow(rows("8", "7", "challenger")) == 600
        assert store.write_shadow(rows("8", "7", "challenger")) == 0  # idempotent
        assert store.write_shadow(rows("9", "7", "champion")) == 600
        report = check(world, store, now=END)
        by = {(r["challenger"], r["champion"]): r for r in report.shadow}
        better, worse = by[("8", "7")], by[("9", "7")]
        assert better["edge_low"] > 0 and worse["edge_high"] < 0
        assert better["challenger_log_loss"] < better["champion_log_loss"]
        findings = {f.check: f for f in report.findings if f.check.startswith("shadow:")}
        assert not findings[f"shadow:{name}:v8:vs:v7"].breached
        assert "better live" in findings[f"shadow:{name}:v8:vs:v7"].message
        bad = findings[f"shadow:{name}:v9:vs:v7"]
        assert bad.breached and "do not promote" in bad.message
        from pipelines.monitor import render

        assert f"shadow {name} v9 vs v7" in render(report)
        with pytest.raises(ValueError, match="outside"):
            store.write_shadow([rows("8", "7", "challenger")[0]._replace(challenger=1.5)])
    finally:
        store.close()


def test_a_live_skill_breach_resolves_when_skill_returns_and_when_the_version_retires(world, tmp_path):
    """Live skill is judged on a rolling window (``monitor.live_window_days``): a champion
    skilful for a week, skill-less the next and skilful again opens exactly one alert and
    resolves it (for the model version and for the tenant), with no repeats; an open alert of a
    version with no live rows left in the window is closed as no longer scored."""
    from pipelines.monitor import Alerts

    params = world.model_copy(update={"monitor": world.monitor.model_copy(update={"live_window_days": 7.0})})
    frame = BarStore(world.data.root).read(SeriesKey("bars", "EURUSD", "M5"))
    bars = Bars.from_frame(frame, 300)
    y = direction_labels(bars, world.labels.direction_spec())["label"]
    times = np.array([datetime.fromtimestamp(int(t), UTC) for t in bars.time])
    week = timedelta(days=7)
    a, b = END - 3 * week, END - 2 * week  # weeks [a, b) skilful, [b, c) skill-less, [c, END) skilful
    c = END - week
    rng = np.random.default_rng(3)
    skill_less_rate = float(np.nanmean(y[(times >= b) & (times < c)]))
    rows = []
    for t, label in zip(times[times >= a], y[times >= a], strict=True):
        if np.isnan(label):
            p = 0.5
        elif b <= t < c:
            p = skill_less_rate  # calibrated in the large, no skill
        else:  # calibrated and informative: P(up | p = 0.7) = 0.7
            p = 0.7 if (label == 1) == (rng.random() < 0.7) else 0.3
        rows.append(
            ScoreRow("EURUSD", "M5", t, 12, "direction", "m", "1", p, False, t + timedelta(minutes=5))
        )
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.migrate()
    tenant, _ = store.add_tenant("window", [Subscription("EURUSD", "M5", 12)], pins={"m": "1"})
    store.write_scores(rows)
    skill = ("skill:model:m:1", f"skill:tenant:{tenant.tenant_id}:m")

    def told(alerts: Alerts, now: datetime) -> list[tuple[str, str]]:
        report = check(params, store, now=now, alerts=alerts)
        assert report.live_since == now - week
        judged = {f.check: f for f in report.findings if f.check in skill}
        assert set(judged) == set(skill) and all(f.judged for f in judged.values())
        due = alerts.update(report.findings, now.timestamp())
        return sorted((n.check, n.kind) for n in due if n.check.startswith("skill:"))

    try:
        alerts = Alerts(tmp_path / "state.json")
        assert told(alerts, b) == []  # healthy: the first week's skill
        assert told(alerts, c) == sorted((s, "breached") for s in skill)
        assert set(skill) <= set(alerts.open) and "no demonstrated skill" in alerts.open[skill[0]]
        assert told(alerts, END) == sorted((s, "resolved") for s in skill)
        assert told(alerts, END) == []  # no repeats

        retired = Alerts(tmp_path / "retired.json")
        assert told(retired, c) == sorted((s, "breached") for s in skill)
        later = END + 4 * week  # nothing scored in the window any more
        report = check(params, store, now=later, alerts=retired)
        assert not report.calibration
        due = retired.update(report.findings, later.timestamp())
        closed = [n for n in due if n.check in skill]
        assert sorted((n.check, n.kind) for n in closed) == sorted((s, "resolved") for s in skill)
        assert all("no longer scored" in n.message for n in closed)
        assert not any(k.startswith("skill:") for k in retired.open)
    finally:
        store.close()
