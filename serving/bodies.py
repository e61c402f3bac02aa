"""Request bodies parsed off the event loop, with a bound on their JSON nesting (issue 14).

BentoML parses a JSON body with pydantic *on the event loop*: a normal 10,000-row `/score`
batch (10 MB) held the loop ~90 ms, during which no other request — not even ``/livez`` —
was answered. `install` replaces BentoML's JSON body reader with one that checks the nesting
depth (`json_depth`, a few ms for 10 MB) against ``serving.max_json_depth`` and then parses:

* a body up to ``OFF_LOOP_BYTES`` on the loop (well under a millisecond);
* a larger ``/score`` body in a helper *process* (`ScoreParser`), which validates it with the
  endpoint's own schema (`serving.schemas.ScoreBody`) and returns the rows as one float32
  matrix: parsing and converting 1.4 million cells holds Python's GIL for ~200 ms in single C
  calls, so in a thread of this process it would still stall the loop;
* any other large body in a worker thread.

The bodies it sees were already held to ``serving.max_body_bytes`` and their key checked
(`serving.guard`).
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

OFF_LOOP_BYTES = 32 * 1024  # smaller bodies parse in well under a millisecond: on the loop
HELPER_IDLE_SECONDS = 5.0  # the parser process exits after this long without a body (~0.3 s to restart)

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


def parse_score_body(body: bytes) -> dict[str, Any]:
    """A `/score` body → its fields, ``rows`` as a float32 matrix (NaN for null); or
    ``{"error": "<field>: <problem>"}`` (run in the parser process; plain data crosses back)."""
    from pydantic import ValidationError

    from serving.schemas import ScoreBody

    try:
        parsed = ScoreBody.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_context=False)[0]
        where = ".".join(str(p)[:40] for p in first.get("loc", ()))
        return {"error": f"{where or 'body'}: {first.get('msg', 'invalid')}"}
    rows = parsed.rows
    width = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        return {"error": f"row {bad} has {len(rows[bad])} values, row 0 has {width}"}
    matrix = np.array(rows, dtype=np.float64)  # None → NaN
    if np.nanmax(np.abs(matrix), initial=0.0) > np.finfo(np.float32).max:
        return {"error": "values beyond float32 range"}
    return {
        "rows": matrix.astype(np.float32),
        "columns": parsed.columns,
        "model": parsed.model,
        "version": parsed.version,
    }


class ScoreParser:
    """One helper process (``python -m serving.bodies``: numpy, pydantic and the schemas, no
    BentoML) that parses large `/score` bodies, one at a time, over a pipe: an 8-byte length
    and the body in, an 8-byte length and the pickled result out. Started on first use;
    restarted if it dies."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def _started(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "serving.bodies"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[1],
            )
        return self._proc

    def parse_blocking(self, body: bytes) -> dict[str, Any]:
        with self._lock:
            proc = self._started()
            try:
                proc.stdin.write(len(body).to_bytes(8, "little") + body)
                proc.stdin.flush()
                size = int.from_bytes(_read_exactly(proc.stdout, 8), "little")
                return pickle.loads(_read_exactly(proc.stdout, size))  # noqa: S301 - our own child
            except (OSError, EOFError, ValueError):
                self.close()  # a helper that died mid-body is replaced on the next call
                raise

    async def parse(self, body: bytes) -> dict[str, Any]:
        import anyio

        return await anyio.to_thread.run_sync(self.parse_blocking, body)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_exactly(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError("the body parser process ended")
    return data


def _serve(stdin: Any, stdout: Any) -> None:  # noqa: C901 - one loop
    """The helper process's loop (see `ScoreParser`). After each body the memory it took is
    handed back to the system (glibc ``malloc_trim``), so the helper idles near its start size."""
    import ctypes
    import gc

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: memory is reused, not returned
        trim = None
    import os
    import select

    os.nice(10)  # parsing bulk bodies gives way to the service's own threads
    while True:
        ready, _, _ = select.select([stdin], [], [], HELPER_IDLE_SECONDS)
        if not ready:
            return  # idle: the service starts a new helper for the next large body
        head = stdin.read(8)
        if len(head) < 8:
            return
        body = _read_exactly(stdin, int.from_bytes(head, "little"))
        try:
            result = parse_score_body(body)
        except Exception as exc:  # noqa: BLE001 - reported to the service as a bad body
            result = {"error": f"body: {type(exc).__name__}"}
        out = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(len(out).to_bytes(8, "little") + out)
        stdout.flush()
        del body, result, out
        gc.collect()
        if trim is not None:
            trim(0)


PARSER = ScoreParser()


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

            if request.url.path.rstrip("/") == "/score" and set(cls.model_fields) >= {"rows", "columns"}:
                depth = await anyio.to_thread.run_sync(json_depth, body)
                if depth > max_depth:
                    raise _too_deep(depth, max_depth)
                fields = await PARSER.parse(body)
                if "error" in fields:
                    from bentoml.exceptions import BentoMLException

                    raise BentoMLException(fields["error"], error_code=HTTPStatus.BAD_REQUEST)
                return cls.model_construct(**fields)  # validated by the same schema over there
            return await anyio.to_thread.run_sync(parse)

    serde.ALL_SERDE["application/json"] = OffLoopJSONSerde  # type: ignore[index]


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
