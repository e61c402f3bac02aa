"""serving.show: the demo's tables of /models and /matrix answers; anything else printed as it
came, with a failing exit status (./run demo then stops: an error is not a table)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from serving import show

MATRIX = {
    "tenant": "acme",
    "follows": 2,
    "missing": ["EURUSD:H1:4:direction"],
    "grid": {
        "EURUSD": {
            "M5": {
                "direction": {
                    "12": {
                        "probability": 0.5312,
                        "signal": "flat",
                        "bar_time": "2024-06-30T23:55:00+00:00",
                        "model": "mt5prob-fx-M5-direction-h12",
                        "version": "3",
                        "scored_at": "2024-07-01T00:00:01+00:00",
                    }
                }
            },
            "H1": {"direction": {"4": None}},
        }
    },
}
MODELS = {
    "tenant": "acme",
    "models": [
        {"name": "mt5prob-fx-M5-direction-h12", "aliases": {"champion": "3"}, "loaded_versions": [],
         "default_version": "3", "state": "serving", "symbols": ["EURUSD", "XAUUSD"]},
        {"name": "mt5prob-fx-H1-direction-h4", "aliases": {}, "loaded_versions": [], "default_version": None,
         "state": "no skill", "no_skill": "the promotion gate found no skill", "symbols": ["EURUSD"]},
    ],
}  # fmt: skip


def run(monkeypatch, capsys, what: str, body: object) -> tuple[int, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(body if isinstance(body, str) else json.dumps(body)))
    code = show.main([what])
    return code, capsys.readouterr().out


def test_matrix_and_models_answers_print_as_tables(monkeypatch, capsys):
    code, out = run(monkeypatch, capsys, "matrix", MATRIX)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "tenant acme: 2 cells followed, 1 without a probability"
    assert any(line.startswith("EURUSD   M5   direction        12   0.531  flat") for line in lines), out
    assert any(line.split() == ["EURUSD", "H1", "direction", "4", "-"] for line in lines), out
    code, out = run(monkeypatch, capsys, "models", MODELS)
    assert code == 0
    assert "serving" in out and "no skill" in out and "└ the promotion gate found no skill" in out


@pytest.mark.parametrize("body", ['{"error": "invalid API key"}', "not json", "[1, 2]"])
def test_an_answer_that_is_not_the_table_is_printed_as_it_came_and_fails(monkeypatch, capsys, body):
    code, out = run(monkeypatch, capsys, "matrix", body)
    assert code == 1 and out.strip() == body


def test_usage(monkeypatch, capsys):
    assert show.main(["grid"]) == 2
