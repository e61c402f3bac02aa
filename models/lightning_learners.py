"""PyTorch Lightning base learners: a small LightningModule around a plain network.

Seeded and deterministic; ``accelerator="auto"`` trains on a GPU when one is present and on
the CPU otherwise. Inputs are median-imputed, standardised (statistics from the training
rows only) and clipped to ±5 standard deviations.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.scaling import center_scale


def _module(net: Any, lr: float, weight_decay: float) -> Any:
    import pytorch_lightning as pl
    import torch

    class BinaryClassifier(pl.LightningModule):
        """Binary cross-entropy on logits; logs ``val_loss`` for early stopping and pruning."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.loss = torch.nn.BCEWithLogitsLoss()

        def training_step(self, batch: Any, _: int) -> Any:
            x, y = batch
            loss = self.loss(self.net(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val_loss", self.loss(self.net(x), y), on_epoch=True, prog_bar=False)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)

    return BinaryClassifier()


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's per-Trainer INFO lines (accelerators found, a tip, why it stopped) and a
    deprecation warning from its own internals: printed on every fit, dozens of times in a
    tuning run, they bury the progress a user is looking for. Warnings of ours still show."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _batches(Z: Any, t: Any, size: int, shuffle: bool) -> Any:
    """A DataLoader yielding whole (x, y) batches by one tensor index each: the default
    per-row fetch-and-collate costs more than the small networks' own steps (3x slower epochs here)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    rows = range(len(t))
    order = RandomSampler(rows) if shuffle else SequentialSampler(rows)
    batches = BatchSampler(order, size, drop_last=False)
    return DataLoader(TensorDataset(Z, t), sampler=batches, batch_size=None)


@dataclass
class MLPLearner:
    """An MLP on the feature matrix, early-stopped on the latest rows of its training window
    (with `purge_rows` dropped in between). Subclasses change the network (`_network`) and the
    column layout (`_arrange`)."""

    hidden: int = 32  # defaults = params.yaml models.mlp (tests/test_configs.py checks)
    layers: int = 2
    dropout: float = 0.3
    lr: float = 3e-4
    weight_decay: float = 1e-2
    max_epochs: int = 20
    batch_size: int = 1024
    patience: int = 3
    validation_fraction: float = 0.2
    purge_rows: int = 0
    seed: int = 0
    callbacks: list[Any] = field(default_factory=list, repr=False)
    name: str = "mlp"
    net: Any = None
    center: Any = None
    scale: Any = None

    def _arrange(self, X: np.ndarray) -> np.ndarray:
        return X

    def _network(self, n_features: int) -> Any:
        from models.networks import MLPNet

        return MLPNet(n_features, self.hidden, self.layers, self.dropout)

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        X = self._arrange(X)
        Z = np.where(np.isnan(X), self.center, X)
        return np.clip((Z - self.center) / self.scale, -5, 5).astype(np.float32)

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPLearner:
        import pytorch_lightning as pl
        import torch
        from pytorch_lightning.callbacks import EarlyStopping

        pl.seed_everything(self.seed, workers=True, verbose=False)
        cut = int(len(y) * (1 - self.validation_fraction))
        fit_end = max(1, cut - self.purge_rows)
        train = self._arrange(X[:fit_end]).astype(np.float64)
        self.center, self.scale = center_scale(train)
        Z = torch.from_numpy(self._prepare(X))
        t = torch.from_numpy(y.astype(np.float32))
        loaders = [
            _batches(Z[:fit_end], t[:fit_end], self.batch_size, shuffle=True),
            _batches(Z[cut:], t[cut:], 8192, shuffle=False),
        ]
        self.net = self._network(train.shape[1])
        with _quiet_lightning():
            trainer = pl.Trainer(
                accelerator="auto",
                devices=1,
                max_epochs=self.max_epochs,
                deterministic=True,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                callbacks=[EarlyStopping("val_loss", patience=self.patience), *self.callbacks],
            )
            trainer.fit(_module(self.net, self.lr, self.weight_decay), *loaders)
        self.net = self.net.cpu().eval()
        self.callbacks = []  # not part of the fitted model (and not picklable in general)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        device = getattr(self, "device", "cpu")
        with torch.no_grad():
            logits = self.net(torch.from_numpy(self._prepare(X)).to(device))
        return torch.sigmoid(logits).cpu().numpy().astype(np.float64)

    def to(self, device: str) -> MLPLearner:
        """Predict on `device` ("cpu" or "cuda"); the fitted weights move with it."""
        self.net = self.net.to(device)
        self.device = device
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the network's weights as NumPy arrays (on CPU), not as a torch module:
        torch pickles tensors through its legacy format, which writes each storage's memory
        address into the bytes, so the same fitted weights would pickle differently every
        time (and `dvc repro` could never reproduce model.pkl byte for byte)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("net", "device")}
        if self.net is not None:
            state["net_weights"] = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        import torch

        weights = state.pop("net_weights", None)
        self.__dict__.update({"net": None, **state})  # older pickles hold the module as `net`
        if weights is not None:
            self.net = self._network(len(self.center))
            self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.net.eval()


@dataclass
class SequenceLearner(MLPLearner):
    """A GRU over the last bars' normalised returns (the ``seq_k`` feature columns at
    `seq_index`, newest first in the matrix, fed oldest first) plus the other features as
    context. Same training loop, scaling and early stopping as `MLPLearner`."""

    seq_index: tuple[int, ...] = ()
    name: str = "sequence"

    def _arrange(self, X: np.ndarray) -> np.ndarray:
        if not self.seq_index:
            raise ValueError(
                "SequenceLearner needs the seq_* feature columns (add return_sequence to features.families)"
            )
        seq = list(reversed(self.seq_index))
        rest = [i for i in range(X.shape[1]) if i not in set(self.seq_index)]
        return X[:, seq + rest]

    def _network(self, n_features: int) -> Any:
        from models.networks import SequenceNet

        n_seq = len(self.seq_index)
        return SequenceNet(n_seq, n_features - n_seq, self.hidden, self.hidden, self.dropout)
