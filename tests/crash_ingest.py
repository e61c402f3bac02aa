"""Run one history ingest and die (os._exit, no cleanup) at a named store stage.

Used by tests/test_bar_store.py to prove crash safety:
    python tests/crash_ingest.py <data_root> <stage> <nth occurrence> <end ISO>
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from pipelines.bar_store import BarStore
from pipelines.config import DataParams
from pipelines.ingest import connect, ingest_history, make_contract
from pipelines.terminal import open_terminal


class SpoilingTerminal:
    """The simulator, but every bar whose open time is a multiple of 97 × its length comes
    with its low above its high: a hard violation, quarantined (the same bars on every read)."""

    def __init__(self, terminal: Any) -> None:
        self._terminal = terminal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._terminal, name)

    def copy_rates_range(self, symbol: str, timeframe: int, date_from: Any, date_to: Any) -> Any:
        rates = self._terminal.copy_rates_range(symbol, timeframe, date_from, date_to)
        if rates is not None and len(rates) > 1:
            step = int(np.diff(rates["time"]).min())
            spoil = (rates["time"] // step) % 97 == 0
            rates = rates.copy()
            rates["low"][spoil] = rates["high"][spoil] + 0.001
        return rates


def crash_client(params: DataParams) -> Any:
    """A connected terminal for the crash scenario (see `SpoilingTerminal`)."""
    client = SpoilingTerminal(open_terminal(params))
    connect(client)
    return client


def crash_params(root: str, end: str) -> DataParams:
    """Settings shared by the crashing run and the reference runs (tight spikes: flagged;
    spoiled bars: quarantined)."""
    return DataParams.model_validate(
        {
            "root": root,
            "symbols": ["EURUSD"],
            "timeframes": ["M5", "H1"],
            "simulator": {"end": end},
            "validation": {"spike_atr_multiple": 2.0, "max_bad_ratio": 0.2},
        }
    )


def main() -> None:
    root, stage, nth, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    seen = {"n": 0}

    def hook(name: str) -> None:
        if name == stage:
            seen["n"] += 1
            if seen["n"] == nth:
                os._exit(137)

    params = crash_params(root, end)
    client = crash_client(params)
    ingest_history(client, BarStore(root, max_parts=1, fault_hook=hook), make_contract(params), params)


if __name__ == "__main__":
    main()
