"""The registry against an MLflow tracking *server* whose backend store is PostgreSQL (the
scale-out setup): register, alias, gate-free champion moves, rollback, load by alias."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.registry import Registry
from serving.devserver import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Constant:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.p)


@pytest.fixture
def mlflow_server(pg_database, tmp_path):
    db = pg_database("mlflow")
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            db,
            "--artifacts-destination",
            (tmp_path / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url, db
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def test_registry_over_an_mlflow_server_on_postgresql(mlflow_server):
    import sqlalchemy as sa

    url, db = mlflow_server
    registry = Registry(url)
    name = "server-test"
    X = pd.DataFrame({"f0": [0.1, 0.2, 0.3]})
    for p in (0.3, 0.7):
        version = registry.log_and_register(
            name, Constant(p), ["f0"], X, {"p": p}, {"ll": 0.69}, {"k": "v"}, []
        )
        registry.set_champion(name, version, reason="test", actor="test")
    assert registry.aliases(name)["champion"] == "2"
    assert registry.rollback(name, None, "server rollback") == ("2", "1")
    model = registry.load(name, "champion").unwrap_python_model()
    assert model.predict_proba(X.to_numpy()).tolist() == [0.3] * 3
    engine = sa.create_engine(db)  # the registry really lives in PostgreSQL
    with engine.connect() as conn:
        aliases = dict(
            conn.execute(
                sa.text("SELECT alias, version FROM registered_model_aliases WHERE name = :n"), {"n": name}
            ).all()
        )
    engine.dispose()
    assert aliases == {"champion": 1, "challenger": 2}  # back at the first champion: no previous one
