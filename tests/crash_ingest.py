"""Run one history ingest and die (os._exit, no cleanup) at a named store stage.

Used by tests/test_bar_store.py to prove crash safety:
    python tests/crash_ingest.py <data_root> <stage> <nth occurrence> <end ISO>
"""

from __future__ import annotations

import os
import sys

from pipelines.bar_store import BarStore
from pipelines.config import DataParams
from pipelines.ingest import connect, ingest_history, make_contract
from pipelines.terminal import open_terminal


def crash_params(root: str, end: str) -> DataParams:
    """Settings shared by the crashing run and the reference runs (tight spikes: quarantine)."""
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
    client = open_terminal(params)
    connect(client)
    ingest_history(client, BarStore(root, max_parts=1, fault_hook=hook), make_contract(params), params)


if __name__ == "__main__":
    main()
