"""Print an API answer read from stdin as a table for people (``./run demo`` pipes its calls
here). The JSON itself is the contract; this is only a view of it. An answer that is not the
expected one (an error, say) is printed as it came.

    curl -s .../models ... | python -m serving.show models
    curl -s .../matrix ... | python -m serving.show matrix
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def models_table(body: dict[str, Any]) -> list[str]:
    """One line per served model: name, state, champion version, what it serves."""
    lines = [f"{'model':<38} {'state':<22} {'champion':>8}  symbols"]
    for m in body["models"]:
        champion = m.get("aliases", {}).get("champion", "-")
        state = m.get("state", "")
        lines.append(f"{m['name']:<38} {state:<22} {champion:>8}  {','.join(m.get('symbols') or [])}")
        if m.get("no_skill"):
            lines.append(f"{'':<38} └ {m['no_skill'][:110]}")
    return lines


def matrix_table(body: dict[str, Any]) -> list[str]:
    """One line per followed cell: symbol, timeframe, label kind, horizon, probability (``-``
    where none is scored yet: its model has no champion or no bar has closed since); an
    up/flat/down cell's P is P(up), its three probabilities follow the model."""
    missing = len(body["missing"])
    lines = [f"tenant {body['tenant']}: {body['follows']} cells followed, {missing} without a probability"]
    head = f"{'symbol':<8} {'tf':<4} {'label kind':<15} {'h':>3}  {'P':>6}  {'signal':<6} {'bar (UTC)':<26}"
    lines.append(head + " model")
    for symbol, by_tf in body["grid"].items():
        for tf, by_kind in by_tf.items():
            for kind, by_h in by_kind.items():
                for h, cell in by_h.items():
                    if cell is None:
                        lines.append(f"{symbol:<8} {tf:<4} {kind:<15} {h:>3}  {'-':>6}")
                    else:
                        three = cell.get("probabilities")
                        lines.append(
                            f"{symbol:<8} {tf:<4} {kind:<15} {h:>3}  {cell['probability']:>6.3f}  "
                            f"{cell['signal']:<6} {cell['bar_time']:<26} {cell['model']} v{cell['version']}"
                            + ("  " + " ".join(f"{k} {v:.3f}" for k, v in three.items()) if three else "")
                        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["models"], ["matrix"]):
        print("usage: python -m serving.show models|matrix < answer.json", file=sys.stderr)
        return 2
    text = sys.stdin.read()
    try:
        body = json.loads(text)
        lines = (models_table if args[0] == "models" else matrix_table)(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        print(text)  # not the answer expected (an error body, say): as it came
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
