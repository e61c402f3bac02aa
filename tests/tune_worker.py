"""One Optuna worker for the shared-study test:
`python tests/tune_worker.py STORAGE STUDY N SEED [BARRIER_DIR]` — with a barrier folder the
worker writes `ready-SEED` there and starts only once `go` appears (both workers start together)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from models.base_learners import LogisticLearner  # noqa: E402
from models.tuning import tune  # noqa: E402
from models.validation import purged_walk_forward_splits  # noqa: E402

if __name__ == "__main__":
    storage, study, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    y = (rng.random(3000) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
    t0 = np.arange(3000) * 300.0
    folds = purged_walk_forward_splits(t0, t0 + 1200, 3, 0.5, 0)
    if len(sys.argv) > 5:
        import time

        barrier = Path(sys.argv[5])
        (barrier / f"ready-{sys.argv[4]}").touch()
        deadline = time.monotonic() + 60
        while not (barrier / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    best = tune(
        study,
        lambda p: LogisticLearner(C=p["C"]),
        {"C": {"low": 1e-4, "high": 10.0, "log": True}},
        X,
        y,
        folds,
        n,
        None,
        storage,
        seed=int(sys.argv[4]) if len(sys.argv) > 4 else 0,
    )
    print(best.params)
