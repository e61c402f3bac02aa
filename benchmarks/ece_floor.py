"""Benchmark: how far below ECE 0.01 can *any* model trained on one simulated window get on
the forward segment? The planted truth, moved to each training window's level, over seeds.

`benchmarks/train_targets.py` judges the planted signal's ECE on a forward segment that no
step of training saw. A model can learn the base rate only from its training window, and that
window's frequency of up-moves differs from the market's by sampling noise (overlapping 12-bar
labels: a few thousand independent labels). This script measures what that alone costs, with no
model at all: for each simulator seed it simulates the training window (as `train_targets`
does: fast profile, ``--bars`` M5 bars) and ``--forward-weeks`` after it, takes the planted
true probabilities, shifts them in logit so that their mean over the training rows equals those
rows' own frequency (`train_targets.level_shift`: the level a model trained there can know), and
prints that shifted truth's 15-bin ECE on the forward rows — the ECE floor of every model
trained on that window — beside the unshifted truth's ECE on the same rows (pure forward noise).

The share of seeds whose floor exceeds 0.01 is the chance that an ideal model fails the ECE
target on that draw; it is printed with a 95 % (Wilson) interval.

    python benchmarks/ece_floor.py [--seeds 7 8 9 ...] [--bars 200000] [--forward-weeks 207]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from train_targets import REPO, START, prepare, shift_to_rate  # noqa: E402

from models.calibration import logit, sigmoid  # noqa: E402
from models.metrics import ece  # noqa: E402
from pipelines import evaluate, train  # noqa: E402
from pipelines.config import load_params  # noqa: E402


def _take(data: train.TrainingData, rows: np.ndarray) -> train.TrainingData:
    """The rows `rows` of `data` (every per-row array sliced; columns and manifest kept)."""
    return replace(
        data,
        **{
            f.name: getattr(data, f.name)[rows]
            for f in fields(data)
            if isinstance(getattr(data, f.name), np.ndarray)
        },
    )


def floor(seed: int, bars: int, forward_weeks: float, work: Path) -> dict:
    """One seed: the training window's frequency, the truth's mean there, and the forward ECE
    of the truth at the training window's level and at its own."""
    base = load_params(REPO / "params.yaml", "fast")
    weeks = bars / len(base.data.symbols) / (5 * 288) + 1
    end = START + timedelta(weeks=weeks)
    over = {
        "data": {
            "root": str(work / "data"),
            "simulator": {
                "end": (end + timedelta(weeks=forward_weeks)).isoformat(),
                "signal_strength": 0.3,
                "seed": seed,
            },
        },
        "outputs": str(work / "outputs"),
    }
    params = load_params(REPO / "params.yaml", "fast", over)
    prepare(params)
    data = train.load_training_data(params.outputs / "featurize", params.labels.kind)
    past = np.flatnonzero(data.bar_time < end.timestamp())
    ahead = np.flatnonzero(data.bar_time >= end.timestamp())
    # the training rows exactly as train_targets' training run has them: the data before `end`,
    # less its holdout (the final 20 % of that window)
    window = _take(data, past)
    rows = past[train.splits(window, params.models)[0].train]
    p_rows = evaluate.true_probabilities(data, rows, params)
    rate = float(data.y[rows].mean())
    shift = shift_to_rate(p_rows, rate)
    p_ahead = evaluate.true_probabilities(data, ahead, params)
    y = data.y[ahead]
    return {
        "train_rows": int(rows.size),
        "train_rate": rate,
        "truth_mean_train": float(np.nanmean(p_rows)),
        "forward_rows": int(ahead.size),
        "forward_rate": float(y.mean()),
        "truth_ece": float(ece(y, p_ahead)),
        "floor": float(ece(y, sigmoid(logit(p_ahead) + shift))),
    }


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(7, 15)))
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--forward-weeks", type=float, default=207.0)
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    print(
        "seed  train rows  train rate  truth mean (train)  forward rows  forward rate  "
        "truth ECE  floor ECE (truth at train level)   s"
    )
    floors = []
    for seed in args.seeds:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            r = floor(seed, args.bars, args.forward_weeks, Path(tmp))
        floors.append(r["floor"])
        print(
            f"{seed:>4}  {r['train_rows']:>10,}  {r['train_rate']:>10.4f}  {r['truth_mean_train']:>18.4f}  "
            f"{r['forward_rows']:>12,}  {r['forward_rate']:>12.4f}  {r['truth_ece']:>9.4f}  "
            f"{r['floor']:>9.4f}{'  > 0.01' if r['floor'] > 0.01 else '':<25}  "
            f"{time.perf_counter() - started:.0f}",
            flush=True,
        )
    over = sum(f > 0.01 for f in floors)
    low, high = wilson(over, len(floors))
    print(
        f"\nfloor ECE over {len(floors)} seeds: median {np.median(floors):.4f}, max {max(floors):.4f}; "
        f"above 0.01 on {over} of {len(floors)} (95 % interval {low:.0%}–{high:.0%}): the chance that a "
        "model exactly as good as the planted truth, trained on one window, misses ECE ≤ 0.01 forward"
    )


if __name__ == "__main__":
    main()
