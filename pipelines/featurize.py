"""Featurize step: stored bars → the feature matrix and every label kind, per symbol.

Reads the base and higher timeframes of every configured symbol from the bar store, builds
the multi-timeframe features (`features.matrix`), checks them against the feature contract,
adds direction, triple-barrier and up/flat/down labels (with their event end times ``*_t1``
for purging; up/flat/down shares the direction's), and writes atomically::

    outputs/featurize/<SYMBOL>.parquet   time, <features…>, close, spread, dir_label, dir_t1, dir_ret,
                                         tb_label, tb_t1, tb_ret, ufd_label        (times UTC)
    outputs/featurize/columns.json       the ordered feature columns, label kind, specs

Entry point (dvc.yaml stage ``featurize``)::

    python -m pipelines.featurize [--params params.yaml] [--profile fast]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa

from features.bars import Bars
from features.labels import direction_labels, triple_barrier_labels, up_flat_down_labels
from features.matrix import build_features
from pipelines.atomic_files import staged_dir, write_parquet_atomic, write_text_atomic
from pipelines.bar_store import BarStore, SeriesKey
from pipelines.config import DataParams, FeaturesParams, LabelsParams
from pipelines.mt5.constants import timeframe_seconds
from pipelines.validate import DataContract

LABEL_COLUMNS = [
    "close",
    "spread",
    "dir_label",
    "dir_t1",
    "dir_ret",
    "tb_label",
    "tb_t1",
    "tb_ret",
    "ufd_label",
]


class FeaturizeError(RuntimeError):
    """Inputs missing or unusable (e.g. a timeframe that was never ingested)."""


def load_bars(store: BarStore, symbol: str, timeframes: Sequence[str]) -> dict[str, Bars]:
    """Stored bars of `symbol` for each timeframe as `Bars` (point inferred from the base)."""
    out: dict[str, Bars] = {}
    point = None
    for tf in timeframes:
        frame = store.read(SeriesKey("bars", symbol, tf))
        if frame.empty:
            raise FeaturizeError(
                f"no stored {symbol} {tf} bars under {store.root}: add {tf} to "
                "data.timeframes and run `python -m pipelines.ingest history`"
            )
        bars = Bars.from_frame(frame, timeframe_seconds(tf), point)
        point = bars.point
        out[tf] = bars
    return out


def featurize_symbol(
    bars: dict[str, Bars], features: FeaturesParams, labels: LabelsParams, contract: DataContract, name: str
) -> tuple[pd.DataFrame, list[str]]:
    """Features + labels of one symbol's base bars, contract-checked."""
    spec = features.spec()
    matrix = build_features(bars, spec)
    frame = matrix.to_frame()
    contract.validate_features(name, frame, matrix.columns, matrix.warmup, matrix.bounds, matrix.masked)
    base = bars[spec.base_timeframe]
    d = direction_labels(base, labels.direction_spec(), spec.market_hours)
    tb = triple_barrier_labels(base, labels.triple_barrier_spec(), hours=spec.market_hours)
    u = labels.up_flat_down
    ufd = up_flat_down_labels(base, labels.horizon, u.flat_within, labels.atr_window, spec.market_hours)
    t1 = {
        k: pd.to_datetime(v, unit="s", utc=True).as_unit("s") for k, v in (("dir", d["t1"]), ("tb", tb["t1"]))
    }
    label_frame = pd.DataFrame(
        {
            "close": base.close,
            "spread": base.spread,
            "dir_label": d["label"],
            "dir_t1": t1["dir"],
            "dir_ret": d["ret"],
            "tb_label": tb["label"],
            "tb_t1": t1["tb"],
            "tb_ret": tb["ret"],
            "ufd_label": ufd["label"],  # its t1 and ret are dir_t1 and dir_ret
        }
    )
    return pd.concat([frame, label_frame], axis=1), matrix.columns


def run(
    data: DataParams,
    features: FeaturesParams,
    labels: LabelsParams,
    out_dir: Path,
    contract: DataContract | None = None,
) -> dict[str, int]:
    """Featurize every configured symbol; returns rows written per symbol."""
    contract = contract or DataContract()
    data_md5 = BarStore(data.root).content_md5()  # before reading: lineage names what was read
    results = {s: featurize_one(data, features, labels, s, contract) for s in data.symbols}
    return write_outputs(results, features, labels, out_dir, data_md5)


def featurize_one(
    data: DataParams,
    features: FeaturesParams,
    labels: LabelsParams,
    symbol: str,
    contract: DataContract | None = None,
) -> tuple[pd.DataFrame, list[str], float]:
    """One symbol's contract-checked features + labels, its column list and point size
    (independent of the other symbols: the unit of a per-symbol fan-out)."""
    store = BarStore(data.root)
    bars = load_bars(store, symbol, [features.base_timeframe, *features.higher_timeframes])
    frame, columns = featurize_symbol(
        bars, features, labels, contract or DataContract(), f"{symbol} {features.base_timeframe}"
    )
    return frame, columns, bars[features.base_timeframe].point


def write_outputs(
    results: dict[str, tuple[pd.DataFrame, list[str], float]],
    features: FeaturesParams,
    labels: LabelsParams,
    out_dir: Path,
    data_md5: str | None = None,
) -> dict[str, int]:
    """Write every symbol's frame and the manifest (only once all symbols are computed), as one
    folder swapped in for `out_dir`: readers see the old outputs or all of the new ones.
    `data_md5`: the bar store's content hash when it was read (`BarStore.content_md5`), kept in
    the manifest as ``data_md5`` for lineage."""
    columns = next(iter(results.values()))[1] if results else []
    for symbol, (_, cols, _) in results.items():
        if cols != columns:
            raise FeaturizeError(f"{symbol}: feature columns differ from the other symbols'")
    with staged_dir(out_dir) as stage:
        _write_folder(results, columns, features, labels, stage, data_md5)
    return {s: len(r[0]) for s, r in results.items()}


def _write_folder(
    results: dict[str, tuple[pd.DataFrame, list[str], float]],
    columns: list[str],
    features: FeaturesParams,
    labels: LabelsParams,
    out_dir: Path,
    data_md5: str | None,
) -> None:
    for symbol, (frame, _, _) in results.items():
        write_parquet_atomic(pa.Table.from_pandas(frame, preserve_index=False), out_dir / f"{symbol}.parquet")
    manifest = {
        "columns": columns,
        "labels": LABEL_COLUMNS,
        "label_kind": labels.kind,
        "symbols": list(results),
        "points": {s: r[2] for s, r in results.items()},
        "base_timeframe": features.base_timeframe,
        "feature_spec": asdict(features.spec()),
        "direction": asdict(labels.direction_spec()),
        "triple_barrier": asdict(labels.triple_barrier_spec()),
        "up_flat_down": labels.up_flat_down.model_dump(),
        "data_md5": data_md5 or "unknown",
    }
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", out_dir / "columns.json")


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import params_from_cli

    params = params_from_cli("python -m pipelines.featurize", __doc__, argv)
    try:
        rows = run(params.data, params.features, params.labels, params.outputs / "featurize")
    except (FeaturizeError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    for symbol, n in rows.items():
        print(f"{symbol}: {n} rows × features → {params.outputs / 'featurize' / symbol}.parquet")
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
