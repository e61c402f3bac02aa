"""The front door's pure parts (issue 14): token buckets, the JSON nesting bound, one-line
error messages, OpenAPI 3.0 spellings, and BentoML's JSON bodies parsed off the event loop.
The same parts through a real server: tests/test_hostile.py."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from pydantic import BaseModel

from serving.bodies import OFF_LOOP_BYTES, PARSER, install, json_depth, parse_score_body
from serving.docs import openapi30
from serving.errors import MAX_MESSAGE, ApiError, bounded
from serving.guard import TokenBuckets, validation_message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_buckets_allow_the_burst_then_the_rate_and_say_how_long_to_wait():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes every 0.5 s
    assert buckets.take("b") == 0.0  # keys are independent
    clock.now += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    assert buckets.wait("a") > 0 and buckets.wait("c") == 0.0  # wait takes nothing
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][:3] == [0.0] * 3  # refills only up to the burst
    assert buckets.wait("a") > 0


def test_token_buckets_forget_the_oldest_keys_beyond_their_bound_and_zero_rate_is_off():
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=100, clock=Clock())
    for i in range(1000):
        buckets.take(f"k{i}")
    assert len(buckets._buckets) <= 101
    off = TokenBuckets(rate=0.0, burst=1)
    assert not off.enabled and all(off.take("a") == 0.0 for _ in range(100))


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"", 0),
        (b'"x"', 0),
        (b"{}", 1),
        (b"[[[]]]", 3),
        (b'{"a": "[[[[["}', 1),
        (b'{"a": "\\\\"}', 1),
        (b'{"a": "\\"[[[", "b": [[1]]}', 3),
        (b'{"a":"\\\\\\"[["}', 1),
        (b'[["[", "]]]]"], {"k": [[]]}]', 4),
        (b'{"rows": [[1, null], [2, 3]], "columns": ["a{", "b]"]}', 3),
    ],
)
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth


def test_json_depth_of_a_deep_or_a_large_body():
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    body = json.dumps({"rows": [[None, 0.5, "x]\\"] * 40] * 5000}).encode()
    assert json_depth(body) == 3


def test_messages_are_one_bounded_line():
    assert bounded("a\nb   c") == "a b c"
    assert len(bounded("x" * 10_000)) == MAX_MESSAGE
    assert len(ApiError(400, "y" * 10**6).message) == MAX_MESSAGE
    bentoml_validation = {
        "error": "2 validation errors for Input",
        "detail": [
            {"type": "float_type", "loc": ["rows", 0, 3], "msg": "Input should be a valid number"},
            {"type": "missing", "loc": ["x" * 500], "msg": "Field required"},
        ],
    }
    assert validation_message(bentoml_validation) == "rows.0.3: Input should be a valid number (and 1 more)"
    assert validation_message([{"error": "JSON nested 9 levels deep"}]) == "JSON nested 9 levels deep"
    assert validation_message({"error": "plain"}) == "plain" and validation_message("?") == "bad request"


def test_openapi30_spellings():
    schema = {
        "properties": {
            "point": {"type": "number", "exclusiveMinimum": 0, "default": None},
            "symbol": {"anyOf": [{"type": "string", "maxLength": 32}, {"type": "null"}]},
            "rows": {"type": "array", "examples": [[[1.0]]], "items": {"type": "number"}},
            "flag": {"type": "boolean", "exclusiveMinimum": True},
        }
    }
    props = openapi30(schema)["properties"]
    assert props["point"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "default": None,
        "nullable": True,
    }
    assert props["symbol"] == {"type": "string", "maxLength": 32, "nullable": True}
    assert props["rows"]["example"] == [[1.0]] and "examples" not in props["rows"]
    assert props["flag"]["exclusiveMinimum"] is True and "minimum" not in props["flag"]


class _Input(BaseModel):
    rows: list[list[float | None]]


class _Request:
    def __init__(self, body: bytes, path: str = "/other") -> None:
        from starlette.datastructures import URL

        self._body = body
        self.headers: dict[str, str] = {}
        self.url = URL(f"http://127.0.0.1{path}")

    async def body(self) -> bytes:
        return self._body


def test_bentoml_json_bodies_over_the_threshold_are_parsed_off_the_event_loop():
    """A large body parses in a worker thread (the loop keeps answering); a small one on the
    loop; a body nested deeper than the limit is refused before parsing."""
    from _bentoml_impl import serde
    from bentoml.exceptions import BentoMLException

    install(max_depth=8)
    reader = serde.ALL_SERDE["application/json"]()
    seen: list[str] = []

    class Spy(_Input):
        @classmethod
        def model_validate_json(cls, data, **kw):  # noqa: ANN001 - pydantic's signature
            seen.append(threading.current_thread().name)
            return super().model_validate_json(data, **kw)

    big = json.dumps({"rows": [[0.5, None] * 50] * (OFF_LOOP_BYTES // 500 + 10)}).encode()
    small = b'{"rows": [[0.5, null]]}'

    async def parse(body: bytes) -> _Input:
        return await reader.parse_request(_Request(body), Spy)

    loop_thread = threading.current_thread().name
    assert len(asyncio.run(parse(big)).rows) > 10 and seen[-1] != loop_thread
    assert asyncio.run(parse(small)).rows == [[0.5, None]] and seen[-1] == loop_thread
    with pytest.raises(BentoMLException, match="nested 12 levels deep"):
        asyncio.run(parse(b'{"rows": ' + b"[" * 11 + b"]" * 11 + b"}"))


def test_large_score_bodies_are_parsed_in_another_process_with_the_endpoints_schema():
    """A large `/score` body comes back as one float32 matrix (nulls as NaN), parsed by a
    helper process; its errors are the schema's, one line naming the field."""
    import os

    import numpy as np
    from _bentoml_impl import serde
    from bentoml.exceptions import BentoMLException

    class Input(BaseModel):
        rows: list[list[float | None]]
        columns: list[str] | None = None
        model: str | None = None
        version: str | None = None

    install(max_depth=8)
    reader = serde.ALL_SERDE["application/json"]()
    n = OFF_LOOP_BYTES // 100 + 10
    body = json.dumps({"rows": [[0.25, None, -1.5] * 10] * n, "version": "2"}).encode()
    try:
        parsed = asyncio.run(reader.parse_request(_Request(body, "/score"), Input))
        assert isinstance(parsed.rows, np.ndarray) and parsed.rows.dtype == np.float32
        assert parsed.rows.shape == (n, 30) and np.isnan(parsed.rows[:, 1]).all() and parsed.version == "2"
        assert PARSER._proc is not None and PARSER._proc.pid != os.getpid()
        PARSER._proc.kill()  # a helper that died is replaced on the next body
        PARSER._proc.wait()
        assert asyncio.run(reader.parse_request(_Request(body, "/score"), Input)).rows.shape == (n, 30)
        bad = json.dumps({"rows": [[0.25] * 30] * n + [[True] * 30]}).encode()
        with pytest.raises(BentoMLException, match=f"rows.{n}.0: Input should be a valid number"):
            asyncio.run(reader.parse_request(_Request(bad, "/score"), Input))
    finally:
        PARSER.close()
    assert parse_score_body(b'{"rows": [[1.0, 2.0], [3.0]]}') == {"error": "row 1 has 1 values, row 0 has 2"}
    assert parse_score_body(b'{"rows": []}')["error"].startswith("rows: List should have at least 1 item")
