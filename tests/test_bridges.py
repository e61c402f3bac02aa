"""Terminal bridges: mt5linux over a real RPyC classic server, module pass-through."""

from __future__ import annotations

import sys
import threading
import time
import types
from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.mt5 import constants as C
from pipelines.mt5.bridges import ModuleClient, Mt5LinuxClient
from pipelines.mt5.simulator import MarketSimulator, SimulatorConfig


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def _module_over(sim: MarketSimulator) -> types.ModuleType:
    """A module that looks like MetaTrader5 to the code that imports it, backed by `sim`."""
    module = types.ModuleType("MetaTrader5")
    for name in (
        "initialize",
        "shutdown",
        "last_error",
        "symbols_get",
        "symbol_info",
        "symbol_info_tick",
        "copy_rates_from",
        "copy_rates_from_pos",
        "copy_rates_range",
        "copy_ticks_from",
        "copy_ticks_range",
    ):
        setattr(module, name, getattr(sim, name))
    return module


@pytest.fixture
def rpyc_terminal(monkeypatch):
    """An RPyC classic server, as mt5linux runs under Wine, whose MetaTrader5 is the simulator."""
    from rpyc.core.service import ClassicService
    from rpyc.utils.server import ThreadedServer

    sim = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 10)))
    monkeypatch.setitem(sys.modules, "MetaTrader5", _module_over(sim))
    server = ThreadedServer(
        ClassicService, hostname="127.0.0.1", port=0, protocol_config={"allow_all_attrs": True}
    )
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10  # start() binds then listens: connect only once it listens
    while not server.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.active, "rpyc server did not start listening"
    yield sim, server
    server.close()


def test_mt5linux_client_over_rpyc(rpyc_terminal):
    sim, server = rpyc_terminal
    client = Mt5LinuxClient("127.0.0.1", server.port)
    assert client.initialize()
    rates = client.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 3))
    assert isinstance(rates, np.ndarray) and rates.dtype == C.RATES_DTYPE
    assert np.array_equal(
        rates, sim.copy_rates_range("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 2), utc(2024, 1, 3))
    )
    ticks = client.copy_ticks_range("EURUSD", utc(2024, 1, 2), utc(2024, 1, 2, 0, 10), C.COPY_TICKS_ALL)
    assert ticks.dtype == C.TICKS_DTYPE and ticks.size > 0
    assert client.symbol_info("XAUUSD").digits == 2
    assert client.symbol_info_tick("EURUSD").ask > 0
    assert client.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M5, 0, 4).size == 4
    assert client.copy_rates_range("NOPE", C.TIMEFRAME_H1, 0, 10) is None
    assert client.last_error()[0] == C.RES_E_NOT_FOUND
    # the bridge goes away: None plus a connection error, then a reconnect works
    server.close()
    client._conn.close()
    assert client.copy_rates_from_pos("EURUSD", C.TIMEFRAME_M5, 0, 4) is None
    assert client.last_error()[0] == C.RES_E_INTERNAL_FAIL_CONNECT
    assert not client.initialize()
    assert "lost" in client.last_error()[1]


def test_mt5linux_unreachable_server_is_a_clear_error():
    client = Mt5LinuxClient("127.0.0.1", 1)
    assert not client.initialize()
    code, message = client.last_error()
    assert code == C.RES_E_INTERNAL_FAIL_CONNECT and "127.0.0.1:1" in message


def test_module_client_passes_through():
    sim = MarketSimulator(SimulatorConfig(end=utc(2024, 1, 10)))
    client = ModuleClient(_module_over(sim))
    assert client.initialize()
    assert client.symbols_get()[0].name == "EURUSD"
    assert client.copy_rates_from("EURUSD", C.TIMEFRAME_H1, utc(2024, 1, 5), 3).size == 3


def test_metatrader5_backend_explains_itself_on_linux():
    from pipelines.mt5.bridges import MetaTrader5Client

    if "MetaTrader5" in sys.modules:
        pytest.fail("MetaTrader5 should not be importable on this Linux test machine")
    with pytest.raises(RuntimeError, match="only for Windows"):
        MetaTrader5Client()
