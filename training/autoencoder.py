"""Fit the autoencoder on normal transactions, with early stopping on validation loss.

Why these choices: the full training stretch has ~170k normal rows and the budget for
all of training is a minute on two cores, so batches are large (2048) with a higher
learning rate, epochs are few, and training stops when the loss on the validation
stretch's normal rows stops improving. The weights of the best epoch are kept.
One torch thread: the matrices are small (2048 x 32), so a second thread gains little on an
idle machine (3.5 s vs ~5 s for 20 epochs on the full data) and on a busy one every one of
the thousands of tiny parallel regions waits for a descheduled thread (measured: 30-89 s).
Everything random flows from one seed (torch generator for the initial weights and a
numpy generator for the shuffles), so a run is reproducible on the same machine.

Why `torch_threads` restores what it found: `torch.set_num_threads` also sets OpenMP's
thread count for the calling thread, and torch and XGBoost share one OpenMP runtime, which
XGBoost reads as a ceiling. Training used to leave it at 1 after the autoencoder, so
XGBoost, given `nthread=2`, silently ran on one core (user time = wall time).

Why `Adam` is not `torch.optim.Adam`: building any `torch.optim.Optimizer` imports
`torch._dynamo`, 2-3.6 s of CPU on the 2-core machine, a fifth of the autoencoder's whole
training on the full data, spent on a compiler this code never uses. `Adam` keeps the same
state and calls the same update (`torch.optim.adam.adam`, single-tensor form, as
`torch.optim.Adam` does on CPU), so the weights come out bit for bit the same (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.adam import adam
from tqdm.auto import tqdm

from core.ensemble import Autoencoder
from training.config import DEFAULT_HIDDEN


@dataclass(frozen=True)
class AutoencoderConfig:
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    patience: int = 3
    threads: int = 1


@dataclass
class AutoencoderFit:
    model: Autoencoder
    best_epoch: int
    best_validation_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch (and OpenMP) threads, then put back the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Adam:
    """`torch.optim.Adam`'s update on `params`, without `torch.optim.Optimizer` (see the module doc)."""

    def __init__(
        self,
        params: Iterator[torch.nn.Parameter] | Sequence[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.tensor(0.0, dtype=torch.float32) for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        adam(
            [self.params[i] for i in with_grad],
            [self.params[i].grad for i in with_grad],
            [self.exp_avgs[i] for i in with_grad],
            [self.exp_avg_sqs[i] for i in with_grad],
            [],
            [self.steps[i] for i in with_grad],
            foreach=False,
            capturable=False,
            differentiable=False,
            fused=None,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )


def _mean_loss(model: Autoencoder, x: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    with torch.inference_mode():
        for start in range(0, x.shape[0], 8 * batch_size):
            chunk = x[start : start + 8 * batch_size]
            recon, _ = model(chunk)
            total += float(torch.sum((recon - chunk) ** 2)) / x.shape[1]
    return total / max(x.shape[0], 1)


def fit_autoencoder(
    train_x: np.ndarray,
    validation_x: np.ndarray,
    config: AutoencoderConfig = AutoencoderConfig(),
    *,
    seed: int = 0,
    progress: bool = True,
) -> AutoencoderFit:
    """Train on the scaled normal training rows; stop on the scaled normal validation rows."""
    with torch_threads(config.threads):
        return _fit(train_x, validation_x, config, seed=seed, progress=progress)


def _fit(
    train_x: np.ndarray, validation_x: np.ndarray, config: AutoencoderConfig, *, seed: int, progress: bool
) -> AutoencoderFit:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Autoencoder(train_x.shape[1], list(config.hidden))
    optimiser = Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    xt = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(validation_x, dtype=np.float32))

    best_loss = float("inf")
    best_epoch = 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    epochs = range(1, config.epochs + 1)
    bar = tqdm(epochs, desc="autoencoder", unit="epoch", disable=not progress, leave=False, position=0)
    for epoch in bar:
        model.train()
        permutation = torch.from_numpy(rng.permutation(xt.shape[0]))
        running = 0.0
        for start in range(0, xt.shape[0], config.batch_size):
            # index_select, not xt[idx]: the same rows, ~50x faster than advanced indexing here
            # (1.2 ms of a 6 ms step).
            batch = torch.index_select(xt, 0, permutation[start : start + config.batch_size])
            recon, _ = model(batch)
            loss = torch.mean((recon - batch) ** 2)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            running += float(loss.detach()) * batch.shape[0]
        model.eval()
        validation_loss = _mean_loss(model, xv, config.batch_size)
        train_loss = running / xt.shape[0]
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss})
        bar.set_postfix(val_loss=f"{validation_loss:.4f}")
        if validation_loss < best_loss - 1e-6:
            best_loss, best_epoch = validation_loss, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return AutoencoderFit(model=model, best_epoch=best_epoch, best_validation_loss=best_loss, history=history)


def hidden_from_text(text: str) -> Sequence[int]:
    """Parse "32,16,8" into layer widths (for the command line)."""
    widths = tuple(int(part) for part in text.split(",") if part.strip())
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"hidden layer widths must be positive integers, got {text!r}")
    return widths
