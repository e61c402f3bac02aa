"""params.yaml and its profiles load into typed settings; bad settings are named in one line;
params.yaml is the source of every default; every entry point stops on a misspelt key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models.learners import LEARNERS
from pipelines.config import ModelsParams, Params, ParamsError, load_params

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("profile", [None, "fast"])
def test_repository_params_load(profile):
    params = load_params(PARAMS, profile)
    assert params.data.backend == "simulator"
    assert params.data.simulator.end > params.data.history_start
    assert all(tf in ("M1", "M5", "M15", "M30", "H1", "H4", "D1") for tf in params.data.timeframes)


def test_a_profile_has_its_own_outputs_unless_it_names_them(tmp_path):
    """`dvc repro` owns ``outputs/``; a profile's runs write under ``outputs/profiles/<name>``."""
    assert load_params(PARAMS).outputs == Path("outputs")
    assert load_params(PARAMS, "fast").outputs == Path("outputs/profiles/fast")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"outputs": "out", "profiles": {"a": {}, "b": {"outputs": "elsewhere"}}}))
    assert load_params(path, "a").outputs == Path("out/profiles/a")
    assert load_params(path, "b").outputs == Path("elsewhere")


def test_fast_profile_is_smaller():
    full, fast = load_params(PARAMS), load_params(PARAMS, "fast")
    assert len(fast.data.symbols) < len(full.data.symbols)

    def span(p):
        return p.data.simulator.end - max(p.data.simulator.start, p.data.history_start)

    assert span(fast) < span(full)
    # the newest bars are the same, so the README's result dates hold under both
    assert fast.data.simulator.end == full.data.simulator.end


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="profile 'turbo'"):
        load_params(PARAMS, "turbo")
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  timeframes: [M7]\n")
    with pytest.raises(ParamsError, match="data.timeframes.*unknown timeframe 'M7'"):
        load_params(bad)
    bad.write_text("data:\n  backend: bloomberg\n")
    with pytest.raises(ParamsError, match="data.backend"):
        load_params(bad)
    bad.write_text("models: {learners: [logistic, forest]}\n")
    with pytest.raises(ParamsError, match="unknown learner.*forest"):
        load_params(bad)
    with pytest.raises(FileNotFoundError, match="run from the repository root"):
        load_params(tmp_path / "missing.yaml")


def _diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [f"{path}: params.yaml {a!r} vs code {b!r}"]


def test_code_defaults_are_params_yaml():
    """One source of defaults: a section built in code equals the file's."""
    differ = _diff(load_params(PARAMS).model_dump(mode="json"), Params().model_dump(mode="json"))
    assert not differ, differ


def test_learner_class_defaults_are_params_yaml():
    from models.lightning_learners import MLPLearner

    mlp = load_params(PARAMS).models.mlp.model_dump()
    defaults = {f.name: f.default for f in dataclasses.fields(MLPLearner) if f.name in mlp}
    assert defaults == mlp


def _misspelt(tmp_path: Path, *path: str) -> Path:
    raw = yaml.safe_load(PARAMS.read_text())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1] + "x"] = node.pop(path[-1])
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.mark.parametrize(
    "path",
    [
        ("data", "symbols"),
        ("models", "mlp", "hidden"),
        ("tune", "n_trials"),
        ("serving", "alias"),
        ("monitor", "psi_max"),
        ("outputs",),
        ("profiles", "fast", "data", "symbols"),
    ],
)
def test_a_misspelt_key_anywhere_is_named_in_one_line(tmp_path, path):
    bad = _misspelt(tmp_path, *path)
    profile = "fast" if path[0] == "profiles" else None
    with pytest.raises(ParamsError) as err:
        load_params(bad, profile)
    where = ".".join(path[2:] if profile else path) + "x"
    message = str(err.value)
    assert f"{where}: unknown key" in message and "\n" not in message, message


ENTRY_POINTS = {
    "pipelines.ingest": ["history"],
    "pipelines.featurize": [],
    "pipelines.tune": [],
    "pipelines.train": [],
    "pipelines.evaluate": [],
    "pipelines.register": [],
    "pipelines.live_score": [],
    "pipelines.monitor": [],
    "pipelines.tenants": ["list"],
    "serving.rollback": ["mt5prob-fx-M5-direction-h12", "--reason", "test"],
    "flows.serve": [],
    "flows.demo": [],
}


def test_every_entry_point_stops_on_a_misspelt_key_with_one_line(tmp_path):
    """Each entry point as a user runs it (``python -m …``, all at once): exit 2, one line on
    stderr naming the key, nothing written."""
    bad = _misspelt(tmp_path, "models", "mlp", "hidden")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MT5PROB_"))}
    runs = {}
    commands = {m: [sys.executable, "-m", m, "--params", str(bad), *a] for m, a in ENTRY_POINTS.items()}
    # the scoring API as the README starts it; the service reads its params from the environment
    bentoml = Path(sys.executable).with_name("bentoml")
    commands["bentoml serve"] = [
        str(bentoml),
        "serve",
        "serving.service:ScoringService",
        "--port",
        "0",
        "--working-dir",
        str(PARAMS.parent),
    ]
    for module, command in commands.items():
        cwd = tmp_path / module
        cwd.mkdir()
        runs[module] = (
            cwd,
            subprocess.Popen(
                command,
                cwd=cwd,
                env={**env, "MT5PROB_PARAMS": str(bad)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    for module, (cwd, proc) in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (module, proc.returncode, err[-2000:])
        assert err.strip().count("\n") == 0 and "models.mlp.hiddenx: unknown key" in err, (module, err)
        assert not list(cwd.iterdir()), (module, list(cwd.iterdir()))  # stopped before any work


def test_models_learners_is_checked_against_the_registry():
    assert set(ModelsParams().learners) <= set(LEARNERS)
    with pytest.raises(ValueError, match="unknown learner"):  # the check itself, not only its default
        ModelsParams(learners=("logistic", "forest"))


def test_every_matrix_cell_is_a_whole_params_of_its_own():
    """A cell id says its group, base timeframe, label kind and horizon; its params take the
    group's symbols, the higher timeframes above its own, its own outputs folder and its
    overrides; every default cell resolves, in the default and the fast profile."""
    from pipelines.config import cell_params

    for profile in (None, "fast"):
        params = load_params(PARAMS, profile)
        assert len(params.matrix.cells) == 14
        kinds = {(c.timeframe, c.label_kind) for c in params.matrix.all()}
        binary = {(tf, k) for tf in ("M5", "M15", "H1") for k in ("direction", "triple_barrier")}
        assert kinds == binary | {("M5", "up_flat_down"), ("M15", "up_flat_down")}
        for cell in params.matrix.all():
            p = cell_params(params, cell.id)
            assert p.features.base_timeframe == cell.timeframe and p.labels.kind == cell.label_kind
            assert p.labels.horizon == cell.horizon and p.registry.symbol_group == "fx"
            assert p.outputs == params.outputs / "cells" / cell.id
            assert set(p.data.symbols) <= set(params.data.symbols)
    fast = load_params(PARAMS, "fast")
    h1 = cell_params(fast, "fx-H1-triple_barrier-h24")
    assert h1.data.symbols == ("EURUSD", "XAUUSD") and h1.features.higher_timeframes == ()
    assert cell_params(fast, "fx-M15-direction-h4").features.higher_timeframes == ("H1",)


def test_matrix_cells_are_checked_with_actionable_errors(tmp_path):
    from pipelines.config import cell_params

    params = load_params(PARAMS)
    with pytest.raises(ParamsError, match=r"no cell 'fx-H1-direction-h6' in matrix.cells \(nearest: fx-H1"):
        cell_params(params, "fx-H1-direction-h6")
    overridden = load_params(
        PARAMS,
        None,
        {
            "matrix": {
                "groups": {"metals": ["XAUUSD"], "crypto": ["BTCUSD"]},
                "cells": {
                    "metals-H1-direction-h6": {"models": {"xgb": {"max_depth": 3}}, "tune": {"n_trials": 2}},
                    "crypto-H1-direction-h6": {},
                    "metals-W1-direction-h2": {},
                },
            }
        },
    )
    metals = cell_params(overridden, "metals-H1-direction-h6")
    assert (
        metals.data.symbols == ("XAUUSD",) and metals.models.xgb.max_depth == 3 and metals.tune.n_trials == 2
    )
    with pytest.raises(ParamsError, match=r"none of group crypto's symbols \['BTCUSD'\] is in data.symbols"):
        cell_params(overridden, "crypto-H1-direction-h6")
    with pytest.raises(ParamsError, match="timeframe W1 is not in data.timeframes"):
        cell_params(overridden, "metals-W1-direction-h2")
    for cells, problem in (
        ({"fx-H1-up-h6": {}}, "not a cell id"),
        ({"fx-H1-direction-h6": {"serving": {}}}, "overrides only features, labels, models, tune"),
    ):
        with pytest.raises(ParamsError, match=problem):
            load_params(PARAMS, None, {"matrix": {"cells": cells}})
    bad = load_params(
        PARAMS, None, {"matrix": {"cells": {"fx-H1-direction-h6": {"models": {"xgb": {"depth": 3}}}}}}
    )
    with pytest.raises(ParamsError, match=r"matrix.cells.fx-H1-direction-h6: models.xgb.depth: unknown key"):
        cell_params(bad, "fx-H1-direction-h6")
