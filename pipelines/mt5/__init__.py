"""MT5 client interface and its backends (simulator, export files, MetaTrader5, mt5linux)."""
