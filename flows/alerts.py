"""Alerts through Prefect's own machinery (issue 18).

The ``monitor`` flow emits one Prefect event per notification due (`models.checks.transitions`:
a check that breaches — once, not on every run while it stays breached — and a check that
resolves): ``mt5prob.alert.breached`` or ``mt5prob.alert.resolved``, on the resource
``mt5prob.check.<check>``, with the message and a link to the monitor run's artifacts in its
payload. A Prefect **automation** on those events sends them to a **notification block**:

    python -m flows.alerts --webhook https://hooks.example.com/T000/B000   # any HTTP endpoint
    python -m flows.alerts --block slack-ops                                # any existing block

creates (or replaces) the automation ``mt5prob-alerts`` and, for ``--webhook``, a
``CustomWebhookNotificationBlock`` named ``mt5prob-alerts`` that POSTs
``{"subject": …, "body": …}`` as JSON. Slack, Teams, PagerDuty, e-mail: create that block in the
Prefect UI (Blocks) and pass its name with ``--block``. The Prefect server must be running
(its triggers and actions services deliver the notifications), and ``PREFECT_API_URL`` must
point at it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from models.checks import Notification

AUTOMATION = "mt5prob-alerts"
BLOCK = "mt5prob-alerts"
SUBJECT = "mt5prob {{ event.payload.kind }}: {{ event.payload.check }}"
BODY = (
    "{{ event.payload.kind | upper }}: {{ event.payload.message }}\n"
    "check: {{ event.payload.check }}\n"
    "run: {{ event.payload.run_url }}"
)


def emit_notifications(due: Sequence[Notification], run_url: str = "") -> int:
    """One Prefect event per notification; returns how many were emitted."""
    from prefect.events import emit_event

    for n in due:
        emit_event(
            event=f"mt5prob.alert.{n.kind}",
            resource={"prefect.resource.id": f"mt5prob.check.{n.check}", "prefect.resource.name": n.check},
            payload={"check": n.check, "kind": n.kind, "message": n.message, "run_url": run_url},
        )
    return len(due)


def webhook_block(url: str, name: str = BLOCK) -> Any:
    """A webhook notification block POSTing ``{"subject", "body"}`` JSON to `url` (saved)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name, url=url, method="POST", json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    block.save(name, overwrite=True)
    return block


def setup_alerts(webhook: str | None = None, block: str | None = None) -> str:
    """Create (or replace) the ``mt5prob-alerts`` automation sending every
    ``mt5prob.alert.*`` event to the notification block (a new webhook block for `webhook`, or
    the existing block named `block`); returns the automation's id."""
    from prefect.automations import Automation, EventTrigger, Posture, SendNotification
    from prefect.blocks.core import Block

    if (webhook is None) == (block is None):
        raise ValueError("give either a webhook URL or the name of an existing notification block")
    if webhook is not None:
        document_id = webhook_block(webhook)._block_document_id
    else:
        document_id = _load_block(Block, block)._block_document_id
    try:
        Automation.read(name=AUTOMATION).delete()
    except ValueError:
        pass  # none yet
    automation = Automation(
        name=AUTOMATION,
        description="mt5prob monitor alerts (flows/alerts.py): breached and resolved checks",
        trigger=EventTrigger(
            expect={"mt5prob.alert.*"},
            match={"prefect.resource.id": "mt5prob.check.*"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=document_id, subject=SUBJECT, body=BODY)],
    ).create()
    return str(automation.id)


def _load_block(block_cls: Any, name: str) -> Any:
    """The saved notification block `name`, whichever notification type it is."""
    for slug in ("custom-webhook", "slack-webhook", "microsoft-teams-webhook", "pager-duty-webhook", "email"):
        try:
            return block_cls.load(f"{slug}/{name}")
        except ValueError:
            continue
    raise ValueError(f"no notification block named {name!r}: create it in the Prefect UI (Blocks) first")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--webhook", help="URL the alerts are POSTed to (JSON: subject, body)")
    where.add_argument("--block", help="name of an existing Prefect notification block")
    args = parser.parse_args(argv)
    try:
        automation = setup_alerts(args.webhook, args.block)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"automation {AUTOMATION} ({automation}): mt5prob.alert.* events → {args.webhook or args.block}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
