"""Backends that talk to a real MetaTrader 5 terminal.

* `MetaTrader5Client` — the official ``MetaTrader5`` package (Windows only), imported only
  when this backend is chosen.
* `Mt5LinuxClient` — a terminal running under Wine, reached through the ``mt5linux`` bridge:
  an RPyC *classic* server started inside Wine's Python (``python -m mt5linux …``). This
  client speaks that protocol itself: it connects, takes the remote ``MetaTrader5`` module
  and calls its functions, copying results back by value. Dates cross the wire as epoch
  seconds (MT5 accepts them), so no object references leak between the two Pythons.

Both pass MT5's own return values through: structured arrays from ``copy_*``, ``None`` plus
``last_error()`` on failure. A dropped bridge connection becomes ``None`` with
``(RES_E_INTERNAL_FAIL_CONNECT, …)`` so callers retry and reconnect as for any terminal error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np

from pipelines.mt5.client import Mt5Client, SymbolInfo, Tick
from pipelines.mt5.constants import RES_E_INTERNAL_FAIL_CONNECT, RES_S_OK
from pipelines.mt5.server_time import to_epoch_seconds


def _to_symbol_info(remote: Any) -> SymbolInfo:
    return SymbolInfo(**{f: getattr(remote, f) for f in SymbolInfo._fields})


def _to_tick(remote: Any) -> Tick:
    return Tick(**{f: getattr(remote, f) for f in Tick._fields})


class ModuleClient(Mt5Client):
    """Pass-through to an object exposing the ``MetaTrader5`` module's functions.

    `obtain` copies a (possibly remote) result into a local value; identity for a local module.
    """

    def __init__(self, module: Any, obtain: Callable[[Any], Any] = lambda x: x) -> None:
        self._mt5 = module
        self._obtain = obtain

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._mt5, name)(*args, **kwargs)

    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        args = (path,) if path else ()
        return bool(self._call("initialize", *args, **{k: v for k, v in kwargs.items() if v is not None}))

    def shutdown(self) -> None:
        self._call("shutdown")

    def last_error(self) -> tuple[int, str]:
        code, message = self._obtain(self._call("last_error"))
        return int(code), str(message)

    def symbols_get(self, group: str | None = None) -> tuple[SymbolInfo, ...] | None:
        result = self._call("symbols_get", group) if group else self._call("symbols_get")
        return None if result is None else tuple(_to_symbol_info(s) for s in result)

    def symbol_info(self, symbol: str) -> SymbolInfo | None:
        result = self._call("symbol_info", symbol)
        return None if result is None else _to_symbol_info(result)

    def symbol_info_tick(self, symbol: str) -> Tick | None:
        result = self._call("symbol_info_tick", symbol)
        return None if result is None else _to_tick(result)

    def _array(self, name: str, *args: Any) -> np.ndarray | None:
        result = self._call(name, *args)
        return None if result is None else np.asarray(self._obtain(result))

    def copy_rates_from(
        self, symbol: str, timeframe: int, date_from: datetime | int, count: int
    ) -> np.ndarray | None:
        return self._array("copy_rates_from", symbol, int(timeframe), to_epoch_seconds(date_from), int(count))

    def copy_rates_from_pos(
        self, symbol: str, timeframe: int, start_pos: int, count: int
    ) -> np.ndarray | None:
        return self._array("copy_rates_from_pos", symbol, int(timeframe), int(start_pos), int(count))

    def copy_rates_range(
        self, symbol: str, timeframe: int, date_from: datetime | int, date_to: datetime | int
    ) -> np.ndarray | None:
        return self._array(
            "copy_rates_range", symbol, int(timeframe), to_epoch_seconds(date_from), to_epoch_seconds(date_to)
        )

    def copy_ticks_from(
        self, symbol: str, date_from: datetime | int, count: int, flags: int
    ) -> np.ndarray | None:
        return self._array("copy_ticks_from", symbol, to_epoch_seconds(date_from), int(count), int(flags))

    def copy_ticks_range(
        self, symbol: str, date_from: datetime | int, date_to: datetime | int, flags: int
    ) -> np.ndarray | None:
        return self._array(
            "copy_ticks_range", symbol, to_epoch_seconds(date_from), to_epoch_seconds(date_to), int(flags)
        )


class MetaTrader5Client(ModuleClient):
    """The official ``MetaTrader5`` package (``pip install 'mt5prob[windows]'`` on Windows)."""

    def __init__(self) -> None:
        try:
            module = importlib.import_module("MetaTrader5")
        except ImportError as exc:
            raise RuntimeError(
                "backend 'mt5' needs the MetaTrader5 package, which exists only for Windows: "
                "on Windows run pip install 'mt5prob[windows]'; on Linux use backend 'mt5linux' "
                "with a terminal under Wine, or 'export' with files exported from the terminal"
            ) from exc
        super().__init__(module)


def _rpyc_connect(host: str, port: int, timeout: float) -> Any:
    try:
        import rpyc
    except ImportError as exc:
        raise RuntimeError("backend 'mt5linux' needs rpyc: pip install 'mt5prob[linux]'") from exc
    return rpyc.classic.connect(host, port, keepalive=True)


def _rpyc_obtain(value: Any) -> Any:
    import rpyc

    return rpyc.classic.obtain(value)


class Mt5LinuxClient(ModuleClient):
    """A terminal under Wine reached through an mt5linux (RPyC classic) server at host:port.

    `connect(host, port, timeout)` returns an RPyC classic connection; tests may pass another
    connection factory. `obtain` copies remote values by value (``rpyc.classic.obtain``).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 18812,
        timeout: float = 30.0,
        connect: Callable[[str, int, float], Any] = _rpyc_connect,
        obtain: Callable[[Any], Any] = _rpyc_obtain,
    ) -> None:
        super().__init__(module=None, obtain=obtain)
        self.host, self.port, self.timeout = host, port, timeout
        self._connect_fn = connect
        self._conn: Any = None
        self._error: tuple[int, str] = (RES_S_OK, "Success")

    def _disconnected(self, exc: BaseException) -> None:
        self._conn, self._mt5 = None, None
        self._error = (
            RES_E_INTERNAL_FAIL_CONNECT,
            f"No IPC connection: mt5linux bridge at {self.host}:{self.port} lost ({exc})",
        )

    def initialize(self, path: str | None = None, **kwargs: Any) -> bool:
        try:
            if self._conn is None:
                self._conn = self._connect_fn(self.host, self.port, self.timeout)
                self._mt5 = self._conn.modules["MetaTrader5"]
            ok = super().initialize(path, **kwargs)
        except (OSError, EOFError) as exc:
            self._disconnected(exc)
            return False
        self._error = (RES_S_OK, "Success") if ok else ModuleClient.last_error(self)
        return ok

    def shutdown(self) -> None:
        if self._conn is not None:
            try:
                super().shutdown()
                self._conn.close()
            except (OSError, EOFError):
                pass
        self._conn, self._mt5 = None, None

    def last_error(self) -> tuple[int, str]:
        if self._conn is None:
            return self._error
        try:
            return super().last_error()
        except (OSError, EOFError) as exc:
            self._disconnected(exc)
            return self._error

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._mt5 is None:
            self._error = (RES_E_INTERNAL_FAIL_CONNECT, "No IPC connection: call initialize() first")
            return None
        try:
            return super()._call(name, *args, **kwargs)
        except (OSError, EOFError) as exc:
            self._disconnected(exc)
            return None
