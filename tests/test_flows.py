"""Prefect flows on a real (temporary) Prefect server: runs, artifacts, failure semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.bar_store import BarStore, SeriesKey
from pipelines.ingest import IngestError


def _params_file(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return str(path)


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.slow
def test_history_flow_ingests_and_publishes_a_table(prefect_harness, tmp_path):
    from flows.ingest import ingest_history_flow

    root = tmp_path / "data"
    path = _params_file(
        tmp_path,
        {
            "root": str(root),
            "symbols": ["EURUSD"],
            "timeframes": ["H1"],
            "simulator": {"end": "2024-01-08T00:00:00"},
        },
    )
    reports = ingest_history_flow(params_path=path, timeframes=["H1", "M15"])
    assert {r.series for r in reports} == {"EURUSD H1", "EURUSD M15"}
    assert BarStore(root).watermark(SeriesKey("bars", "EURUSD", "M15")) is not None
    artifact = max(_artifacts("ingest-history"), key=lambda a: a.created)  # other tests publish it too
    assert "EURUSD M15" in str(artifact.data) and "written" in str(artifact.data)
    again = ingest_history_flow(params_path=path)
    assert [r.written for r in again] == [0]


@pytest.mark.slow
def test_history_flow_fails_fast_on_bad_input(prefect_harness, tmp_path):
    from flows.ingest import ingest_history_flow, ingest_history_task

    path = _params_file(tmp_path, {"root": str(tmp_path / "data"), "symbols": ["NOPE"]})
    with pytest.raises(IngestError, match="unknown symbol"):
        ingest_history_flow(params_path=path)
    assert not (tmp_path / "data").exists()
    assert ingest_history_task.retries == 3  # retries exist, but only for terminal errors


@pytest.mark.slow
def test_live_flow_polls_and_reports(prefect_harness, tmp_path):
    from flows.ingest import ingest_live_flow

    path = _params_file(
        tmp_path,
        {
            "root": str(tmp_path / "data"),
            "symbols": ["EURUSD"],
            "timeframes": ["M1"],
            "history_start": "2024-01-03T09:00:00",
            "simulator": {"live": True, "speed": 600, "end": None, "live_start": "2024-01-03T10:00:00"},
            "live": {"poll_seconds": 0.1},
        },
    )
    stats = ingest_live_flow(params_path=path, polls=3)
    assert stats["polls"] == 3 and stats["written"] >= 60
    assert _artifacts("ingest-live")
