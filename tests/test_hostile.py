"""The scoring service as a hostile client and a failing infrastructure see it (issue 14): a
real ``bentoml serve`` whose results store *and* model registry are PostgreSQL databases
reached through TCP proxies that the tests take down and bring back. Each test drives one
finding of the issue: rate and concurrency limits, failed keys, one log line per rejection,
NUL bytes on PostgreSQL, endpoint switches, the store, the registry and a corrupt artifact
failing and recovering, a locked table against the statement timeout, and TLS."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from features.labels import direction_labels
from features.matrix import build_features
from features.spec import DirectionLabelSpec
from models.base_learners import LogisticLearner
from pipelines.registry import Registry
from pipelines.store import ResultsStore, Subscription, app_url
from serving.devserver import running_service
from tests.faults import TcpProxy
from tests.test_serving import NAME, SPEC, _bars

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LIMITS = {
    "per_address_rps": 20,
    "per_address_burst": 40,
    "failed_keys_per_minute": 6,
    "failed_keys_burst": 5,
    "per_tenant_rps": 500,
    "per_tenant_burst": 1000,
    "tenant_concurrency": 1,
    "request_timeout_seconds": 10,
    "max_json_depth": 8,
}


def _via(url: str, proxy: TcpProxy) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, pg_database):
    root = tmp_path_factory.mktemp("hostile")
    results_admin = pg_database("hostile_results")
    registry_url = pg_database("hostile_mlflow")
    target = sa.make_url(results_admin)
    store_proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    registry_proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    bars = _bars()
    fm = build_features(bars, SPEC)
    y = direction_labels(bars["M5"], DirectionLabelSpec(horizon=12))["label"]
    ok = np.isfinite(y) & np.isfinite(fm.values).all(axis=1)
    X = fm.values[ok]
    registry = Registry(registry_url)
    meta = {"feature_spec": dataclasses.asdict(SPEC), "base_timeframe": "M5", "label_kind": "direction"}
    example = pd.DataFrame(X[:3], columns=fm.columns)
    for version in ("1", "2", "3"):
        learner = LogisticLearner(C=0.1).fit(X, y[ok])
        assert (
            registry.log_and_register(
                NAME,
                learner,
                fm.columns,
                example,
                {},
                {},
                {"git_commit": "t"},
                [],
                meta={**meta, "horizon": 12},
            )
            == version
        )
    registry.set_champion(NAME, "2", reason="test setup", actor="test")
    registry.client.delete_registered_model_alias(NAME, "challenger")
    # version 3's artifact is corrupted on disk: loading it must fail, cleanly and rarely
    model_dir = Path(registry.client.get_model_version_download_uri(NAME, "3").removeprefix("file://"))
    for pickled in model_dir.rglob("*.pkl"):
        pickled.write_bytes(b"not a pickle")
    store = ResultsStore(app_url(results_admin), results_admin)
    store.migrate()
    follows = [Subscription("EURUSD", "M5", 12)]
    keys = {name: store.add_tenant(name, follows)[1] for name in ("acme", "busy", "calm", "fresh")}
    params = root / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "registry": {"tracking_uri": _via(registry_url, registry_proxy)},
                "store": {
                    "url": _via(app_url(results_admin), store_proxy),
                    "admin_url": results_admin,
                    "statement_timeout_ms": 1000,
                    "connect_timeout_seconds": 2,
                },
                "serving": {
                    "models": [NAME],
                    "reload_interval_seconds": 0.5,
                    "health_interval_seconds": 0.5,
                    "broken_version_seconds": 30,
                    "auth_cache_seconds": 0,
                    "max_body_bytes": 8 * 2**20,
                    "limits": LIMITS,
                    "endpoints": {"score_bars": False},
                },
                "events": {"url": None},
            }
        )
    )
    log = root / "serve.log"
    with running_service(params, log=log) as service:
        yield {
            "url": service.url,
            "log": log,
            "keys": keys,
            "X": X,
            "store": store,
            "admin": results_admin,
            "store_proxy": store_proxy,
            "registry_proxy": registry_proxy,
            "registry_url": registry_url,
        }
    store.close()
    store_proxy.close()
    registry_proxy.close()


def client(address: str) -> httpx.Client:
    """An HTTP client whose requests come from `address` (any 127.x.y.z is loopback here), so
    each test has its own per-address budget."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def score(c: httpx.Client, world, tenant: str | None = "acme", **body) -> httpx.Response:
    headers = {"X-API-Key": world["keys"][tenant]} if tenant else {"X-API-Key": "mt5p_wrong"}
    return c.post(world["url"] + "/score", json={"rows": world["X"][-1:].tolist(), **body}, headers=headers)


def ready_within(world, ready: bool, timeout: float) -> tuple[float, dict]:
    started = time.monotonic()
    while True:
        r = httpx.get(world["url"] + "/readyz", timeout=5)
        if (r.status_code == 200) == ready:
            return time.monotonic() - started, r.json()
        if time.monotonic() - started > timeout:
            raise AssertionError(f"/readyz still {r.status_code} {r.text} after {timeout} s")
        time.sleep(0.1)


def test_a_switched_off_endpoint_answers_404_naming_the_switch(world):
    with client("127.0.0.2") as c:
        r = c.post(world["url"] + "/score_bars", json={}, headers={"X-API-Key": world["keys"]["acme"]})
        assert r.status_code == 404 and "serving.endpoints.score_bars" in r.json()["error"]
        assert score(c, world).status_code == 200
        paths = c.get(world["url"] + "/docs/openapi.json").json()["paths"]
        assert "/score_bars" not in paths and "/score" in paths


def test_nul_bytes_and_overflowing_dates_are_400_on_postgresql(world):
    key = {"X-API-Key": world["keys"]["acme"]}
    with client("127.0.0.3") as c:
        for body, field in (
            ({"symbol": "EUR\x00USD"}, "symbol"),
            ({"timeframe": "M\x005"}, "timeframe"),
            ({"symbol": "E" * 10_000}, "symbol"),
        ):
            r = c.post(world["url"] + "/results/latest", json=body, headers=key)
            assert r.status_code == 400 and r.json()["error"].startswith(field), r.text
            assert len(r.content) < 400
        for start, end in (
            ("0001-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z"),
            ("2024-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00"),
        ):
            r = c.post(world["url"] + "/results/range", json={"start": start, "end": end}, headers=key)
            assert r.status_code == 400 and "out of range" in r.text, r.text
        r = c.post(
            world["url"] + "/results/range", json={"start": "2024-01-01", "end": "2024-02-01"}, headers=key
        )
        assert r.status_code == 200, r.text


def test_per_address_rate_limit_answers_429_with_retry_after(world):
    """Past the burst an address gets 429s (each held back until a token would be there, so a
    client retrying in a loop slows to the limit's pace) while other addresses are served."""
    with client("127.0.0.4") as c, ThreadPoolExecutor(4) as pool:  # 4 at a time: well over 20/s
        started = time.monotonic()
        tenants = ("acme", "busy", "calm", "fresh")  # one per thread: no tenant's concurrency bound is met
        answers = list(pool.map(lambda i: score(c, world, tenant=tenants[i % 4]), range(160)))
        took = time.monotonic() - started
    codes = [r.status_code for r in answers]
    limited = next(r for r in answers if r.status_code == 429 and "from 127.0.0.4" in r.text)
    assert codes[:30].count(200) >= 28 and set(codes) == {200, 429}, codes
    assert int(limited.headers["retry-after"]) >= 1
    assert "too many requests from 127.0.0.4" in limited.json()["error"]
    # what got through is what the bucket allows: its burst plus its rate over the time taken
    assert codes.count(200) <= LIMITS["per_address_burst"] + LIMITS["per_address_rps"] * took + 1, (
        codes,
        took,
    )
    # a flood of 429s is logged as one line per address per second, with the count not logged
    lines = [line for line in world["log"].read_text().splitlines() if "from 127.0.0.4: 429" in line]
    assert 1 <= len(lines) <= 3 and codes.count(429) > len(lines), lines
    with client("127.0.0.5") as other:  # another address is not affected
        assert score(other, world).status_code == 200


def test_failed_keys_are_limited_harder_and_cost_no_lookup_once_limited(world):
    """After `failed_keys_burst` bad keys an address gets 429 before any key look-up: with
    the results store down it still answers 429 (a look-up would have been a 503)."""
    with client("127.0.0.6") as c:
        codes = [score(c, world, tenant=None).status_code for _ in range(5)]
        assert codes == [401] * 5
        world["store_proxy"].down()
        try:
            limited = score(c, world, tenant=None)
            assert limited.status_code == 429 and "failed API keys" in limited.json()["error"]
            assert int(limited.headers["retry-after"]) >= 1
        finally:
            world["store_proxy"].up()
    ready_within(world, True, 10)


def test_one_tenant_cannot_hold_more_requests_than_its_concurrency_bound(world):
    """`busy` sends 8 large batches at once with a bound of 1 in progress: the excess is
    429, while `calm` is served."""
    rows = np.tile(world["X"][-1:], (10_000, 1)).tolist()

    def big(i: int) -> int:
        with client(f"127.0.1.{i + 1}") as c:
            r = c.post(
                world["url"] + "/score", json={"rows": rows}, headers={"X-API-Key": world["keys"]["busy"]}
            )
            return r.status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(big, i) for i in range(8)]
        with client("127.0.0.7") as c:
            calm = [score(c, world, tenant="calm").status_code for _ in range(5)]
        codes = [f.result() for f in futures]
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    assert calm == [200] * 5


def test_each_rejected_request_logs_one_line_and_no_traceback(world):
    key = {"X-API-Key": world["keys"]["acme"], "Content-Type": "application/json"}
    bad = [
        b"{not json",
        json.dumps({"rows": [["a"] * 14] * 500}).encode(),
        json.dumps({"rows": [[True] * 14]}).encode(),
        b'{"rows": ' + b"[" * 50 + b"]" * 50 + b"}",
        json.dumps({"rows": [[0.1] * 14], "version": "\u0662"}).encode(),
        json.dumps({"rows": [[0.1] * 14], "model": "nope"}).encode(),
        json.dumps({"rows": [[0.1] * 3]}).encode(),
    ]
    before = world["log"].read_text()
    with client("127.0.0.8") as c:
        for body in bad:
            r = c.post(world["url"] + "/score", content=body, headers=key)
            assert 400 <= r.status_code < 500 and list(r.json()) == ["error"], r.text
            assert len(r.content) < 400
        r = c.post(world["url"] + "/score", content=b"x", headers={**key, "Content-Type": "text/plain"})
        assert r.status_code == 415
    time.sleep(0.5)
    new = world["log"].read_text()[len(before) :]
    assert "Traceback" not in new and "Exception on" not in new, new[-3000:]
    assert new.count("rejected POST /score from 127.0.0.8") == len(bad) + 1, new[-3000:]
    assert "nested 51 levels deep" in new


def test_results_store_outage_is_503_not_ready_and_recovers_by_itself(world):
    with client("127.0.0.9") as c:
        assert (
            c.post(
                world["url"] + "/results/latest", json={}, headers={"X-API-Key": world["keys"]["acme"]}
            ).status_code
            == 200
        )
        world["store_proxy"].down()
        try:
            down_after, body = ready_within(world, False, 10)
            assert down_after <= 5 and any("results store unavailable" in r for r in body["reasons"]), body
            r = c.post(
                world["url"] + "/results/latest", json={}, headers={"X-API-Key": world["keys"]["acme"]}
            )
            assert r.status_code == 503 and "results store is unavailable" in r.json()["error"]
            assert score(c, world).status_code == 503
        finally:
            world["store_proxy"].up()
        back_after, _ = ready_within(world, True, 10)
        assert back_after <= 5
        assert (
            c.post(
                world["url"] + "/results/latest", json={}, headers={"X-API-Key": world["keys"]["acme"]}
            ).status_code
            == 200
        )
    assert "Traceback" not in world["log"].read_text()


def test_registry_outage_is_not_ready_keeps_serving_what_is_loaded_and_recovers(world):
    with client("127.0.0.10") as c:
        world["registry_proxy"].down()
        try:
            down_after, body = ready_within(world, False, 10)
            assert down_after <= 5 and any("model registry unavailable" in r for r in body["reasons"]), body
            assert score(c, world).status_code == 200  # the champion in memory keeps serving
            r = score(c, world, version="1")  # not loaded: needs the registry
            assert r.status_code == 503 and "registry" in r.json()["error"], r.text
        finally:
            world["registry_proxy"].up()
        back_after, _ = ready_within(world, True, 10)
        assert back_after <= 5
        assert score(c, world, version="1").status_code == 200


def test_a_corrupt_artifact_is_503_naming_the_version_and_is_not_retried_on_every_request(world):
    with client("127.0.0.11") as c:
        first = score(c, world, version="3")
        assert first.status_code == 503 and "version 3 of" in first.json()["error"], first.text
        started = time.monotonic()
        again = [score(c, world, version="3") for _ in range(5)]
        assert all(r.status_code == 503 and "next attempt in" in r.json()["error"] for r in again)
        assert time.monotonic() - started < 2
        assert score(c, world).status_code == 200  # other versions unaffected
    assert world["log"].read_text().count(f"version 3 of {NAME} failed to load") == 1


def test_a_locked_table_costs_a_503_after_the_statement_timeout_and_never_stalls_livez(world):
    """An operator's 6 s lock on the tenants table: a key look-up gives up after
    ``statement_timeout_ms`` (1 s here) with a 503, and ``/livez`` keeps answering at once."""
    engine = sa.create_engine(world["admin"])
    locked = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(6)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        livez: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                httpx.get(world["url"] + "/livez", timeout=5)
                livez.append(time.perf_counter() - t)
                time.sleep(0.02)

        prober = threading.Thread(target=probe)
        prober.start()
        with client("127.0.0.12") as c:
            started = time.monotonic()
            r = score(c, world, tenant="fresh")
            took = time.monotonic() - started
        stop.set()
        prober.join()
    finally:
        release.set()
        holder.join()
        engine.dispose()
    assert r.status_code == 503 and "results store" in r.json()["error"], r.text
    assert took < 4, took
    assert max(livez) < 0.25 and len(livez) > 10, (max(livez), len(livez))
    ready_within(world, True, 10)


def _self_signed(root: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost) and its key, PEM files in `root`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mt5prob test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = root / "cert.pem", root / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_tls_from_params_serves_https_only(world, tmp_path):
    """``serving.ssl_certfile``/``ssl_keyfile`` make ``bentoml serve`` speak TLS: a client
    that trusts the certificate scores over https; plain http to the same port gets nothing."""
    cert, key = _self_signed(tmp_path)
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    store.migrate()
    _, api_key = store.add_tenant("tls", [Subscription("EURUSD", "M5", 12)])
    store.close()
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "registry": {"tracking_uri": world["registry_url"]},
                "store": {"url": f"sqlite:///{tmp_path / 'results.db'}"},
                "serving": {"models": [NAME], "ssl_certfile": str(cert), "ssl_keyfile": str(key)},
                "events": {"url": None},
            }
        )
    )
    with running_service(params, log=tmp_path / "serve.log") as service:
        assert service.url.startswith("https://")
        r = httpx.post(
            service.url + "/score",
            json={"rows": world["X"][-1:].tolist()},
            headers={"X-API-Key": api_key},
            verify=str(cert),
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["version"] == "2", r.text
        with pytest.raises(httpx.TransportError):
            httpx.get(service.url.replace("https://", "http://") + "/livez", timeout=5)
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused by the client
            httpx.get(service.url + "/livez", timeout=5)


def test_postgresql_sslmode_in_the_store_url_reaches_libpq(world):
    """TLS to PostgreSQL is the URL's ``sslmode``: ``require`` against this machine's server
    (SSL off) fails at connect with libpq's reason, instead of silently talking in clear;
    ``disable`` connects."""
    plain = ResultsStore(world["admin"] + "?sslmode=disable", connect_timeout=5)
    plain.ping()
    plain.close()
    required = ResultsStore(world["admin"] + "?sslmode=require", connect_timeout=5)
    with sa.create_engine(world["admin"]).connect() as conn:
        server_ssl = conn.execute(sa.text("SHOW ssl")).scalar()
    try:
        if server_ssl == "on":
            required.ping()
        else:
            with pytest.raises(sa.exc.OperationalError, match="SSL"):
                required.ping()
    finally:
        required.close()
