"""The one back-off rule of the platform's retry loops (live ingestion, the live worker,
webhook delivery)."""

from __future__ import annotations


def retry_after(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones in a row: `initial`
    doubling per failure, capped at `maximum`."""
    return min(maximum, initial * 2 ** max(0, attempts - 1))
