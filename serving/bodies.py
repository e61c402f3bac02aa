"""Request bodies parsed off the event loop, with a bound on their JSON nesting (issue 14).

BentoML parses a JSON body with pydantic *on the event loop*: a normal 10,000-row `/score`
batch (10 MB) held the loop ~90 ms, during which no other request — not even ``/livez`` —
was answered. `install` replaces BentoML's JSON body reader with one that parses bodies over
``OFF_LOOP_BYTES`` in a worker thread, after checking their nesting depth (`json_depth`,
a few ms for 10 MB) against ``serving.max_json_depth``. The bodies it sees were already held
to ``serving.max_body_bytes`` and their key checked (`serving.guard`).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import numpy as np

OFF_LOOP_BYTES = 32 * 1024  # smaller bodies parse in well under a millisecond: on the loop

_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')  # every byte but these is dropped
_ESCAPE = re.compile(rb"\\.", re.S)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text `body` (``{}`` is 1, a scalar
    0), brackets inside strings ignored. Does not validate the JSON; C-speed byte passes and
    one numpy pass over the brackets only."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)  # escaped characters, \" included, cannot open or close
    structure = np.frombuffer(body.translate(None, _STRUCTURE), dtype=np.uint8)
    if structure.size == 0:
        return 0
    quotes = structure == 34
    if quotes.any():
        in_string = np.cumsum(quotes) % 2 == 1
        structure = structure[~in_string & ~quotes]
    step = np.where((structure == 91) | (structure == 123), 1, -1).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def _too_deep(depth: int, limit: int) -> Exception:
    from bentoml.exceptions import BentoMLException

    return BentoMLException(
        f"JSON nested {depth} levels deep; this API's bodies nest at most {limit}",
        error_code=HTTPStatus.BAD_REQUEST,
    )


def install(max_depth: int) -> None:
    """Make BentoML read JSON request bodies with `OffLoopJSONSerde` (idempotent). Relies on
    BentoML 1.4's serde table (``_bentoml_impl.serde.ALL_SERDE``), which the pinned version
    has; `tests/test_hostile.py` checks the effect through a real server."""
    import anyio
    from _bentoml_impl import serde

    class OffLoopJSONSerde(serde.JSONSerde):
        async def parse_request(self, request: Any, cls: type) -> Any:
            body = await request.body()
            payload = serde.Payload((body,), metadata=request.headers)
            if len(body) <= OFF_LOOP_BYTES:
                depth = json_depth(body)
                if depth > max_depth:
                    raise _too_deep(depth, max_depth)
                return self.deserialize_model(payload, cls)

            def parse() -> Any:
                depth = json_depth(body)
                if depth > max_depth:
                    raise _too_deep(depth, max_depth)
                return self.deserialize_model(payload, cls)

            return await anyio.to_thread.run_sync(parse)

    serde.ALL_SERDE["application/json"] = OffLoopJSONSerde  # type: ignore[index]
