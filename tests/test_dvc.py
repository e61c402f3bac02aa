"""data.dvc: a fresh clone rebuilds data/ offline with exactly the versioned content (`dvc repro`
from it: tests/test_end_to_end.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_ingest_rebuilds_data_dvc_exactly(tmp_path):
    """The simulator and the store are deterministic, so `dvc status` finds data/ unchanged —
    and the committed dvc.lock is current: every stage's code, params and data are the ones it
    records (only the outputs, which a clone does not have, are missing)."""
    import json

    work = tmp_path / "clone"
    work.mkdir()
    for name in ("params.yaml", "data.dvc", ".dvcignore", "dvc.yaml", "dvc.lock"):
        shutil.copy(REPO / name, work / name)
    for package in ("features", "pipelines", "models"):
        shutil.copytree(REPO / package, work / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(work),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=work, env=env, check=True)
    ingest = subprocess.run(
        [sys.executable, "-m", "pipelines.ingest", "history"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    before = (work / "data.dvc").read_text()
    subprocess.run(dvc + ["commit", "-f", "-q", "data.dvc"], cwd=work, env=env, check=True, timeout=300)
    assert (work / "data.dvc").read_text() == before  # same content hash as the committed data.dvc
    status = subprocess.run(
        dvc + ["status", "data.dvc"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout, status.stdout
    status = subprocess.run(
        dvc + ["status", "--json"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0, status.stderr
    stale = {}
    for stage, changes in json.loads(status.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                stale.setdefault(stage, []).append(change)
                continue
            for kind, detail in change.items():
                if kind == "changed outs" or (
                    kind == "changed deps"
                    and all(
                        path.startswith("outputs/") and what == "deleted" for path, what in detail.items()
                    )
                ):
                    continue
                stale.setdefault(stage, []).append({kind: detail})
    assert not stale, f"dvc.lock is stale (run dvc repro and commit dvc.lock): {stale}"
    # `dvc repro` from such data is run by tests/test_end_to_end.py (the demo, fast profile)
