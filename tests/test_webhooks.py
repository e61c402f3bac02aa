"""Per-tenant webhooks from the durable outbox (pipelines/webhooks.py), against real HTTP
endpoints in this process: signed, in order, exactly the tenant's events, retried with the
same body and key until acknowledged, and a slow or dead endpoint delays no one else."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_results_store import FOLLOWS, rows

from pipelines.config import WebhooksParams
from pipelines.store import StoreError, Subscription
from pipelines.tenants import main as tenants_cli
from pipelines.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookDispatcher, verify

FAST = WebhooksParams(
    timeout_seconds=1.0, backoff_initial_seconds=0.05, backoff_max_seconds=0.2, poll_seconds=0.05
)


class Receiver:
    """A real HTTP server. Paths: /ok answers 200; /flaky answers 500 `fail` times, then 200;
    /slow sleeps 3 s before answering. Records (path, headers, body, received at)."""

    def __init__(self, fail: int = 2) -> None:
        self.got: list[tuple[str, dict[str, str], bytes, float]] = []
        self.fail = fail
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((self.path, dict(self.headers), body, time.monotonic()))
                status = 200
                if self.path == "/flaky" and outer.fail > 0:
                    outer.fail -= 1
                    status = 500
                if self.path == "/slow":
                    time.sleep(3.0)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[tuple[dict[str, str], dict]]:
        return [(h, json.loads(b)) for p, h, b, _ in self.got if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


def _run_until(dispatcher: WebhookDispatcher, done, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dispatcher.dispatch()
        dispatcher.drain()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("webhook delivery did not finish in time")


def test_batches_are_signed_in_order_and_only_the_tenants_own(store, receiver):
    a, _ = store.add_tenant("a", [FOLLOWS[0]])
    store.add_tenant("b", [FOLLOWS[1]])
    store.write_scores(rows("EURUSD", 1))  # before the webhook: not sent (history is on the stream)
    secret = store.set_webhook("a", receiver.url + "/ok")
    store.write_scores(rows("EURUSD", 3, start=1) + rows("XAUUSD", 3))
    dispatcher = WebhookDispatcher(store, FAST)
    try:
        _run_until(dispatcher, lambda: len(receiver.posts("/ok")) == 1)
        store.write_scores(rows("EURUSD", 2, start=4))
        _run_until(dispatcher, lambda: len(receiver.posts("/ok")) == 2)
        dispatcher.dispatch()  # nothing new: no request
        dispatcher.drain()
    finally:
        dispatcher.close()
    posts = [(h, b) for p, h, b, _ in receiver.got if p == "/ok"]
    assert len(posts) == 2
    ids = []
    for headers, body in posts:
        assert verify(secret, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify(secret, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
        assert not verify("another secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        payload = json.loads(body)
        events = payload["events"]
        assert payload["tenant_id"] == a.tenant_id and {e["symbol"] for e in events} == {"EURUSD"}
        assert headers["Idempotency-Key"] == f"{a.tenant_id}:{events[0]['event_id']}-{events[-1]['event_id']}"
        ids += [e["event_id"] for e in events]
    assert len(ids) == 5 and ids == sorted(set(ids))  # bars 1..5, each once, in order
    with store.tenant(a.tenant_id, "test") as s:
        assert ids == s.events(after=0)["event_id"].tolist()[1:]
    hook = store.webhook("a")
    assert (hook.delivered_through, hook.pending_through, hook.attempts, hook.delivered) == (
        ids[-1],
        None,
        0,
        5,
    )


def test_a_failing_endpoint_gets_the_same_body_again_and_events_wait(store, receiver):
    store.add_tenant("a", [FOLLOWS[0]])
    store.set_webhook("a", receiver.url + "/flaky")
    store.write_scores(rows("EURUSD", 2))
    dispatcher = WebhookDispatcher(store, FAST)
    try:
        dispatcher.dispatch()
        dispatcher.drain()
        failed = store.webhook("a")
        assert (
            failed.attempts == 1 and failed.last_status == "HTTP 500" and failed.pending_through is not None
        )
        store.write_scores(rows("EURUSD", 1, start=2))  # arrives while the first batch is failing
        _run_until(dispatcher, lambda: store.webhook("a").pending_through is None)
        _run_until(dispatcher, lambda: len(receiver.posts("/flaky")) == 4)
    finally:
        dispatcher.close()
    posts = [(h, b) for p, h, b, _ in receiver.got if p == "/flaky"]
    first, retries, last = posts[0], posts[1:3], posts[3]
    for headers, body in retries:  # the pending batch again: the same bytes, the same key
        assert body == first[1] and headers["Idempotency-Key"] == first[0]["Idempotency-Key"]
    assert len(json.loads(first[1])["events"]) == 2 and len(json.loads(last[1])["events"]) == 1
    hook = store.webhook("a")
    assert hook.attempts == 0 and hook.last_status == "HTTP 200" and hook.delivered == 3


def test_slow_and_dead_endpoints_do_not_delay_another_tenants_delivery(store, receiver):
    for name in ("slow", "dead", "ok"):
        store.add_tenant(name, [FOLLOWS[0]])
    store.set_webhook("slow", receiver.url + "/slow")
    store.set_webhook("dead", _dead_url())
    store.set_webhook("ok", receiver.url + "/ok")
    store.write_scores(rows("EURUSD", 2))
    dispatcher = WebhookDispatcher(store, FAST)
    try:
        started = time.monotonic()
        dispatcher.dispatch()
        deadline = started + 5
        while not receiver.posts("/ok") and time.monotonic() < deadline:
            time.sleep(0.005)
        ok_after = next(t for p, _, _, t in receiver.got if p == "/ok") - started
        dispatcher.drain()
    finally:
        dispatcher.close()
    assert ok_after < 0.5, f"the healthy endpoint waited {ok_after:.2f}s behind a slow one"
    slow, dead, ok = (store.webhook(n) for n in ("slow", "dead", "ok"))
    assert slow.attempts == 1 and slow.last_status.startswith("timeout") and slow.delivered == 0
    assert dead.attempts == 1 and "Connect" in dead.last_status and dead.delivered == 0
    assert slow.pending_through == dead.pending_through == ok.delivered_through  # waiting, counted
    assert ok.delivered == 2 and ok.attempts == 0


def test_a_dispatcher_killed_mid_send_sends_exactly_that_batch_again(store, receiver):
    store.add_tenant("a", [FOLLOWS[0]])
    store.set_webhook("a", receiver.url + "/ok")
    store.write_scores(rows("EURUSD", 2))
    hook = store.webhooks_due()[0]
    events, last = store.webhook_batch(hook, max_events=500)  # recorded pending; then the process dies
    store.write_scores(rows("EURUSD", 2, start=2))
    dispatcher = WebhookDispatcher(store, FAST)
    try:
        _run_until(dispatcher, lambda: len(receiver.posts("/ok")) == 2)
    finally:
        dispatcher.close()
    (h1, b1), (h2, b2) = receiver.posts("/ok")
    assert [e["event_id"] for e in b1["events"]] == [e["event_id"] for e in events]
    assert h1["Idempotency-Key"].endswith(f"-{last}") and len(b2["events"]) == 2


def test_webhook_urls_are_checked_and_the_cli_round_trips(tmp_path, capsys, receiver):
    params = tmp_path / "params.yaml"
    params.write_text(f"store:\n  url: sqlite:///{tmp_path / 'r.db'}\n")
    assert tenants_cli(["--params", str(params), "add", "a", "--follow", "EURUSD:M5:12"]) == 0
    assert tenants_cli(["--params", str(params), "webhook", "a", "ftp://example.com/x"]) == 2
    assert "expected http(s)://host" in capsys.readouterr().err
    assert tenants_cli(["--params", str(params), "webhook", "a", receiver.url + "/ok"]) == 0
    assert "signing secret (shown once" in capsys.readouterr().out
    assert tenants_cli(["--params", str(params), "webhook", "a", "--status"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["url"] == receiver.url + "/ok" and "secret" not in state and state["attempts"] == 0
    assert tenants_cli(["--params", str(params), "webhook", "a", "--remove"]) == 0
    assert tenants_cli(["--params", str(params), "webhook", "a", "--status"]) == 0
    assert "has no webhook" in capsys.readouterr().out


def test_removing_a_tenant_removes_its_webhook(store, receiver):
    store.add_tenant("a", [Subscription("EURUSD", "M5", 12)])
    store.set_webhook("a", receiver.url + "/ok")
    store.remove_tenant("a")
    assert store.webhooks_due() == []
    with pytest.raises(StoreError):
        store.set_webhook("a", receiver.url + "/ok")
