"""Where to compute: CUDA when present, CPU otherwise (same code either way)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when torch sees a CUDA device (imports torch on first call)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def xgboost_device() -> str:
    """``"cuda"`` for xgboost when a GPU is present, else ``"cpu"``."""
    return "cuda" if cuda_available() else "cpu"
