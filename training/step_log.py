"""The steps between two log flushes: timed, checked finite, added to the open epoch's loss sums, and written
to metrics.jsonl as one record per step (with the window's images per second)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from genlab.training.distributed import DistEnv
from genlab.training.metrics_log import MetricsLog
from tqdm import tqdm

from genlab.checkpoint import Progress
from genlab.errors import GenlabError


class TrainingDiverged(GenlabError):
    exit_code = 1


class StepLog:
    """One window of steps at a time: :meth:`open` it, :meth:`add` each step's losses, :meth:`flush` it."""

    def __init__(self, env: DistEnv, log: MetricsLog, ckpt_path: Path, lr: float):
        self.env, self.log, self.ckpt_path, self.lr = env, log, ckpt_path, lr
        self.open(0)

    def open(self, step: int) -> None:
        """A new window, after ``step`` steps."""
        self.pending: list[dict[str, torch.Tensor]] = []
        self.first_step, self.images, self.started = step, 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], images: int) -> None:
        self.pending.append(losses)
        self.images += images

    def __len__(self) -> int:
        return len(self.pending)

    def flush(self, at: Progress, bar: tqdm) -> None:
        """Close the window into ``at`` (seconds, loss sums) and the log; stop on a loss that is not finite."""
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        seconds = time.perf_counter() - self.started
        at.train_seconds += seconds
        names = list(self.pending[0])
        values = torch.stack([torch.stack([p[n] for n in names]) for p in self.pending]).float().cpu()
        if not torch.isfinite(values).all():
            raise self._diverged(names, values, at.epoch)
        rate = self.images * self.env.world_size / max(seconds, 1e-9)
        for i, row in enumerate(values.tolist()):
            record = dict(zip(names, row, strict=True))
            for n, v in record.items():
                at.epoch_sums[n] = at.epoch_sums.get(n, 0.0) + v
            at.epoch_count += 1
            if self.env.is_main:
                step = self.first_step + i + 1
                self.log.add({"kind": "step", "epoch": at.epoch + 1, "step": step, **record, "img_per_s": rate})
        if self.env.is_main:
            bar.set_postfix(
                {**{n: f"{v:.3g}" for n, v in zip(names, values[-1].tolist(), strict=True)}, "img/s": f"{rate:,.0f}"}
            )
        self.open(at.step)

    def _diverged(self, names: list[str], values: torch.Tensor, epoch: int) -> TrainingDiverged:
        bad_row, bad_col = map(int, torch.nonzero(~torch.isfinite(values))[0])
        return TrainingDiverged(
            f"loss {names[bad_col]} became {values[bad_row, bad_col].item()} at step {self.first_step + bad_row + 1} "
            f"(epoch {epoch + 1}); stopped, {self.ckpt_path} keeps the last good checkpoint "
            f"(epoch {epoch}); try a lower learning rate, e.g. --set lr={self.lr / 2:g}"
        )
