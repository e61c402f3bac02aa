"""Tenant administration for the results store.

    python -m pipelines.tenants migrate
    python -m pipelines.tenants add NAME --follow EURUSD:M5:12 [--follow XAUUSD:M5:12:triple_barrier]
                                     [--long-above 0.55] [--short-below 0.45] [--pin MODEL=VERSION]
    python -m pipelines.tenants list
    python -m pipelines.tenants update TENANT [--follow ...] [--long-above P] [--short-below P]
                                     [--pin MODEL=VERSION] [--unpin]
    python -m pipelines.tenants rotate-key TENANT
    python -m pipelines.tenants remove TENANT --yes
    python -m pipelines.tenants export TENANT --out FILE.zip|FILE.parquet|FILE.csv
    python -m pipelines.tenants webhook TENANT URL | --status | --remove
    python -m pipelines.tenants erasures
    python -m pipelines.tenants keygen [--out FILE]
    python -m pipelines.tenants rotate-master-key --new-key-file FILE
    python -m pipelines.tenants rotate-data-key TENANT|_platform [--batch N]
    python -m pipelines.tenants prune-audit

TENANT is an id or a name. ``add`` and ``rotate-key`` print the API key once; only its hash
is stored. ``remove`` erases the tenant (right to be forgotten): its data keys are destroyed
(crypto-shredding: every copy of its sealed data, backups included, becomes unreadable), then
its rows are deleted, and an erasure record without personal data is kept (``erasures`` lists
them). ``keygen`` prints (or writes, mode 0600) a new master key; ``rotate-master-key``
re-wraps every data key under the key in FILE — tenant rows are not touched — after which the
processes need that key (MT5PROB_MASTER_KEY / MT5PROB_MASTER_KEY_FILE; the old one may stay in
MT5PROB_MASTER_KEY_PREVIOUS until they have restarted). ``rotate-data-key`` re-seals a tenant's
values (``_platform``: the probabilities) under a new data key, online, in batches; rerun it
after a crash and it resumes. ``prune-audit`` deletes audit rows older than
``store.audit_retention_days`` (the prune-audit deployment runs it daily).
``export`` writes its whole package (portability: settings, subscription and pin
history, results, audit trail; JSON and Parquet with a manifest and SHA-256 checksums — see
pipelines/store/export.py) to a .zip, or only its results to .parquet or .csv, atomically.
``webhook`` sets the tenant's webhook (pipelines/webhooks.py: its results POSTed as they
are committed, HMAC-signed with the secret it prints once), shows its delivery state, or
removes it. The store is ``store:`` in params.yaml (``--params``, ``--profile``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.config import Params
from pipelines.store import ResultsStore, StoreError, Subscription
from pipelines.store.crypto import KeyringError, new_master_key_text


def served_follows(params: Params, texts: Sequence[str]) -> list[Subscription]:
    """Parse ``--follow`` values, accepting only what a served model serves
    (`pipelines.registry.catalog`: a cell of the matrix whose group holds the ingested symbol,
    or a model of ``serving.models``). Anything else is a `StoreError` naming the nearest."""
    from pipelines.registry import catalog, subscription_model_name

    subs = [Subscription.parse(t) for t in texts]
    served = catalog(params)
    for sub in subs:
        key = (sub.symbol, sub.timeframe, sub.horizon, sub.label_kind)
        info = served.get(subscription_model_name(params, sub))
        if info is not None and (info["symbols"] is None or sub.symbol in info["symbols"]):
            continue
        near = params.matrix.nearest(*key, params.data.symbols)
        where = (
            f"{sub.symbol} is not among data.symbols {list(params.data.symbols)}"
            if sub.symbol not in params.data.symbols
            else f"matrix.cells has no {sub.timeframe} {sub.label_kind} cell {sub.horizon} bars ahead "
            f"holding {sub.symbol}"
        )
        text = f"{sub.symbol}:{sub.timeframe}:{sub.horizon}:{sub.label_kind}"
        raise StoreError(
            f"--follow {text}: no model serves it ({where})"
            + (f"; nearest served: {', '.join(near)}" if near else "")
        )
    return subs


def _pins(values: Sequence[str]) -> dict[str, str]:
    pins = {}
    for value in values:
        name, sep, version = value.partition("=")
        if not sep or not name or not version.isdigit():
            raise StoreError(f"--pin {value!r}: expected MODEL_NAME=VERSION (a version number)")
        pins[name] = version
    return pins


def export_results(store: ResultsStore, ref: str, out: Path) -> int:
    """Write the tenant's package (`out` .zip: `pipelines.store.export`) or every result row of
    it (.parquet or .csv) to `out`, atomically; returns the number of results."""
    from pipelines.atomic_files import write_atomic

    if out.suffix not in (".zip", ".parquet", ".csv"):
        raise StoreError(f"--out {out}: use a .zip (the whole package), .parquet or .csv file name")
    tenant = store.find_tenant(ref)
    if out.suffix == ".zip":
        from pipelines.store.export import export_package

        data, manifest = export_package(store, tenant.tenant_id, actor="admin:export")
        write_atomic(out, lambda h: h.write(data))  # type: ignore[attr-defined]
        return int(manifest["files"]["results.parquet"]["rows"])
    with store.tenant(tenant.tenant_id, actor="admin:export") as session:
        frame = session.probabilities()
        session.audit("tenant.export", {"rows": len(frame), "file": out.name})
    from pipelines.store.export import flat_results

    frame = flat_results(frame)
    if out.suffix == ".parquet":
        write_atomic(out, lambda h: frame.to_parquet(h, index=False))
    else:
        write_atomic(out, lambda h: h.write(frame.to_csv(index=False).encode()))  # type: ignore[attr-defined]
    return len(frame)


def _webhook_command(store: ResultsStore, args: object) -> str:
    tenant, url = args.tenant, args.url  # type: ignore[attr-defined]
    if args.remove:  # type: ignore[attr-defined]
        return f"webhook of {tenant} removed" if store.remove_webhook(tenant) else f"{tenant} has no webhook"
    if args.status or not url:  # type: ignore[attr-defined]
        hook = store.webhook(tenant)
        if hook is None:
            return f"{tenant} has no webhook (set one: webhook {tenant} https://...)"
        state = {k: v for k, v in vars(hook).items() if k != "secret"}
        return json.dumps(state, default=str)
    secret = store.set_webhook(tenant, url)
    return (
        f"webhook of {tenant} → {url}; signing secret (shown once, store it now): {secret}\n"
        "bodies are signed: X-Mt5prob-Signature = sha256=HMAC-SHA256(secret, "
        "X-Mt5prob-Timestamp + '.' + body)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import cli_parser, load_params

    parser = cli_parser("python -m pipelines.tenants", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the store's tables")
    add = sub.add_parser("add", help="create a tenant and print its API key once")
    add.add_argument("name")
    for p in (add, update := sub.add_parser("update", help="change what a tenant follows or its thresholds")):
        p.add_argument("--follow", action="append", default=[], metavar="SYMBOL:TF:HORIZON[:KIND]")
        p.add_argument("--long-above", type=float, default=None)
        p.add_argument("--short-below", type=float, default=None)
        p.add_argument("--pin", action="append", default=[], metavar="MODEL=VERSION")
    update.add_argument("tenant")
    update.add_argument("--unpin", action="store_true", help="drop every pin (use champion)")
    sub.add_parser("list", help="tenants as JSON lines (never keys)")
    rotate = sub.add_parser("rotate-key", help="issue a new key; the old one stops working")
    rotate.add_argument("tenant")
    remove = sub.add_parser("remove", help="delete a tenant and all of its results")
    remove.add_argument("tenant")
    remove.add_argument("--yes", action="store_true", help="confirm")
    export = sub.add_parser("export", help="a tenant's package (.zip) or its results (.parquet, .csv)")
    export.add_argument("tenant")
    export.add_argument("--out", type=Path, required=True)
    hook = sub.add_parser("webhook", help="set, show or remove a tenant's webhook")
    hook.add_argument("tenant")
    hook.add_argument("url", nargs="?", help="http(s) URL that receives the tenant's results")
    hook.add_argument("--status", action="store_true", help="show the delivery state")
    hook.add_argument("--remove", action="store_true", help="stop the webhook")
    sub.add_parser("erasures", help="erasure records as JSON lines (no personal data)")
    keygen = sub.add_parser("keygen", help="print a new master key (or write it to --out, mode 0600)")
    keygen.add_argument("--out", type=Path, default=None)
    remaster = sub.add_parser("rotate-master-key", help="re-wrap every data key under a new master key")
    remaster.add_argument("--new-key-file", type=Path, required=True)
    rekey = sub.add_parser("rotate-data-key", help="re-seal a tenant's values under a new data key")
    rekey.add_argument("owner", help="a tenant id or name, or _platform for the probabilities")
    rekey.add_argument("--batch", type=int, default=1000)
    sub.add_parser("prune-audit", help="delete audit rows older than store.audit_retention_days")
    args = parser.parse_args(argv)

    if args.command == "keygen":
        return _keygen(args.out)
    params = load_params(args.params, args.profile)
    try:
        store = ResultsStore.from_params(params.store)
    except (KeyringError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "migrate":
            store.migrate()
            print(f"store at {store.dialect} is at the newest migration")
            return 0
        store.migrate()
        if args.command == "add":
            tenant, key = store.add_tenant(
                args.name,
                served_follows(params, args.follow),
                0.55 if args.long_above is None else args.long_above,
                0.45 if args.short_below is None else args.short_below,
                _pins(args.pin),
            )
            print(json.dumps(tenant.as_dict()))
            print(f"API key (shown once, store it now): {key}")
        elif args.command == "update":
            tenant = store.update_tenant(
                args.tenant,
                follows=served_follows(params, args.follow) or None,
                long_above=args.long_above,
                short_below=args.short_below,
                pins={} if args.unpin else (_pins(args.pin) or None),
            )
            print(json.dumps(tenant.as_dict()))
        elif args.command == "list":
            for tenant in store.list_tenants():
                print(json.dumps(tenant.as_dict()))
        elif args.command == "rotate-key":
            print(f"new API key (shown once; the old key no longer works): {store.rotate_key(args.tenant)}")
        elif args.command == "remove":
            if not args.yes:
                raise StoreError("remove deletes the tenant and all of its results: add --yes to confirm")
            counts = store.remove_tenant(args.tenant)
            print(
                f"erased {args.tenant}: {counts['keys']} data key(s) destroyed, "
                f"{counts['results']} results no longer its, rows deleted: "
                + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("keys", "results"))
            )
        elif args.command == "erasures":
            for record in store.erasures():
                print(json.dumps(record, default=str))
        elif args.command == "rotate-master-key":
            print(_rotate_master(store, args.new_key_file))
        elif args.command == "prune-audit":
            days = params.store.audit_retention_days
            print(f"pruned {store.prune_audit(days)} audit rows older than {days:g} days")
        elif args.command == "rotate-data-key":
            done = store.rotate_data_key(args.owner, batch=args.batch)
            print(
                f"data key of {done['owner']} is version {done['version']}"
                f"{' (resumed)' if done['resumed'] else ''}: {done['resealed']} values re-sealed in "
                f"{done['batches']} batches, {done['retired']} old version(s) destroyed "
                f"in {done['seconds']:.1f} s"
            )
        elif args.command == "webhook":
            print(_webhook_command(store, args))
        elif args.command == "export":
            print(f"wrote {export_results(store, args.tenant, args.out)} rows to {args.out}")
        return 0
    except (StoreError, KeyringError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _keygen(out: Path | None) -> int:
    import os

    text = new_master_key_text()
    if out is None:
        print(text)
        return 0
    if out.exists():
        print(f"error: {out} exists; a master key is never overwritten", file=sys.stderr)
        return 2
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    print(f"wrote a new master key to {out} (mode 0600): point MT5PROB_MASTER_KEY_FILE at it")
    return 0


def _rotate_master(store: ResultsStore, new_key_file: Path) -> str:
    done = store.rotate_master_key(new_key_file)
    return (
        f"re-wrapped {done['data_keys']} data keys under master key {done['master_key_id']} "
        f"in {done['seconds']:.2f} s "
        "(no tenant row touched); give the processes the new key "
        "(old one in MT5PROB_MASTER_KEY_PREVIOUS until they restart)"
    )


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
