"""Open the MT5 backend that ``data.backend`` names. The one place that picks a backend."""

from __future__ import annotations

import os

from pipelines.config import DataParams
from pipelines.mt5.client import Mt5Client


def open_terminal(params: DataParams) -> Mt5Client:
    """An *uninitialised* client for the configured backend (call ``initialize()`` on it)."""
    if params.backend == "simulator":
        from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig

        sim = params.simulator
        return MarketSimulator(
            SimulatorConfig(
                seed=sim.seed,
                start=sim.start,
                end=sim.end,
                signal_strength=sim.signal_strength,
                signal_halflife_minutes=sim.signal_halflife_minutes,
                ticks_per_minute=sim.ticks_per_minute,
                texture=sim.texture,
                live=sim.live,
                speed=sim.speed,
                live_start=sim.live_start,
                live_anchor=sim.live_anchor,
                outages=tuple(tuple(o) for o in sim.outages),
                clock=params.server_time.clock(),
            )
        )
    if params.backend == "export":
        from pipelines.mt5.export_files import ExportFileClient

        return ExportFileClient(params.export.directory, digits=params.export.digits)
    if params.backend == "mt5linux":
        from pipelines.mt5.bridges import Mt5LinuxClient

        cfg = params.mt5linux
        return Mt5LinuxClient(cfg.host, cfg.port, cfg.timeout_seconds)
    from pipelines.mt5.bridges import MetaTrader5Client

    return MetaTrader5Client()


def initialize_kwargs(params: DataParams) -> dict[str, object]:
    """Arguments for ``initialize()`` (login, server, password from its env variable)."""
    if params.backend != "mt5":
        return {}
    cfg = params.mt5
    return {
        "path": cfg.path,
        "login": cfg.login,
        "server": cfg.server,
        "password": os.environ.get(cfg.password_env),
        "timeout": cfg.timeout_ms,
    }
