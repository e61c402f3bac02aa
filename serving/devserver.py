"""Start the scoring service as a real ``bentoml serve`` subprocess on a loopback port (tests,
benchmarks and the demo), wait until it is ready, and stop it (with its workers) afterwards."""

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` now (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tls(params: Path) -> bool:
    """Whether the params file turns TLS on (``serving.ssl_certfile``)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(params).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return bool((raw.get("serving") or {}).get("ssl_certfile"))


@dataclass(frozen=True)
class RunningService:
    url: str  # http://127.0.0.1:PORT (https:// when the params file turns TLS on)
    pid: int  # the bentoml serve process (its workers are its children)


@contextlib.contextmanager
def running_service(
    params: Path,
    profile: str | None = None,
    port: int | None = None,
    timeout: float = 180.0,
    log: Path | None = None,
) -> Iterator[RunningService]:
    """Yields the running service once ``/readyz`` answers 200."""
    port = port or free_port()
    bentoml = Path(sys.executable).with_name("bentoml")
    env = {**os.environ, "MT5PROB_PARAMS": str(Path(params).resolve()), "BENTOML_DO_NOT_TRACK": "True"}
    if profile:
        env["MT5PROB_PROFILE"] = profile
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(bentoml), "serve", "serving.service:ScoringService", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    scheme, context = "http", None
    if _tls(params):  # our own child on loopback: its readiness is probed without verification
        scheme, context = "https", ssl._create_unverified_context()  # noqa: S323
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode} (log: {log})")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2, context=context) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as exc:  # 503 with the reasons: say them if it never gets ready
                last = f"{exc.code} {exc.read()[:500].decode(errors='replace')}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"service not ready after {timeout:.0f} s (last /readyz: {last}; log: {log})"
                )
            time.sleep(0.3)
        yield RunningService(url, proc.pid)
    finally:
        tree = _descendants(proc.pid)  # bentoml's workers run in sessions of their own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10
        while tree and time.monotonic() < deadline:  # workers end after the arbiter; make sure
            tree = [pid for pid in tree if _alive(pid)]
            time.sleep(0.1)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if log:
            out.close()
