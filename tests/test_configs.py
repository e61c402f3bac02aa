"""params.yaml and its profiles load into typed settings; bad settings are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.config import load_params

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.mark.parametrize("profile", [None, "fast"])
def test_repository_params_load(profile):
    params = load_params(PARAMS, profile)
    assert params.data.backend == "simulator"
    assert params.data.simulator.end > params.data.history_start
    assert all(tf in ("M1", "M5", "M15", "M30", "H1", "H4", "D1") for tf in params.data.timeframes)


def test_fast_profile_is_smaller():
    full, fast = load_params(PARAMS), load_params(PARAMS, "fast")
    assert len(fast.data.symbols) < len(full.data.symbols)
    assert fast.data.simulator.end < full.data.simulator.end


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="profile 'turbo'"):
        load_params(PARAMS, "turbo")
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  timeframes: [M7]\n")
    with pytest.raises(ValidationError, match="unknown timeframe 'M7'"):
        load_params(bad)
    bad.write_text("data:\n  backend: bloomberg\n")
    with pytest.raises(ValidationError, match="backend"):
        load_params(bad)
    with pytest.raises(FileNotFoundError, match="run from the repository root"):
        load_params(tmp_path / "missing.yaml")
