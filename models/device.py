"""Where to compute: CUDA when present, CPU otherwise (same code either way)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


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


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device (use 'auto' or 'cpu')")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: use auto, cpu or cuda")
    return device


def place(model: Any, device: str) -> Any:
    """Move a fitted learner, stack or ensemble to `device` where it knows how (``to``);
    learners without one (logistic regression) stay on the CPU."""
    mover = getattr(model, "to", None)
    return mover(device) if callable(mover) else model
