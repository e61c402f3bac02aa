"""Roll the ``champion`` alias back, with the reason recorded in MLflow.

    python -m serving.rollback NAME [--to VERSION] [--reason TEXT] [--params params.yaml]

Without ``--to``: back to the previous champion (the history of champions is kept on the
registered model, so repeated rollbacks keep stepping back). With ``--to``: that version.
Running services pick the move up within ``serving.reload_interval_seconds`` (they load the
version first, then switch), without restart and without failing requests in flight.
Promotion (the gate in ``python -m pipelines.register``) is picked up the same way.
"""

import getpass
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.config import cli_parser, load_params
    from pipelines.registry import Registry

    parser = cli_parser("python -m serving.rollback", __doc__)
    parser.add_argument("name", help="registered model name, e.g. mt5prob-fx-M5-direction-h12")
    parser.add_argument(
        "--to", default=None, help="version to make champion (default: the previous champion)"
    )
    parser.add_argument("--reason", default="manual rollback", help="recorded on both versions")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.profile)
    registry = Registry(params.registry.tracking_uri)
    try:
        old, new = registry.rollback(args.name, args.to, args.reason, actor=f"rollback:{getpass.getuser()}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.name}: champion {old} -> {new} ({args.reason}); services follow within "
        f"{params.serving.reload_interval_seconds:g} s"
    )
    return 0


if __name__ == "__main__":
    from pipelines.config import run_cli

    raise SystemExit(run_cli(main))
