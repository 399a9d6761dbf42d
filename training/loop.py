"""The one training loop. It knows nothing about model families: each family brings its
optimizers and its ``train_step``; the loop brings data, devices, checkpoints and exact resume,
and calls the parts that end an epoch and a run.

Run directory layout::

    RUN_DIR/last.pt              checkpoint (atomic; each epoch, on Ctrl-C, at --max-steps); ``--resume`` continues it
    RUN_DIR/best.pt              the epoch whose samples measured best (training.best_checkpoint)
    RUN_DIR/metrics.jsonl        one record per step and per epoch
    RUN_DIR/samples/epoch_NNN.png        samples from fixed latents, each epoch (training.sample_grids)
    RUN_DIR/samples/recon_epoch_NNN.png  held-out images (odd rows) and reconstructions (even rows)
    RUN_DIR/samples.png, RUN_DIR/reconstructions.png   the latest of each
    RUN_DIR/loss_curves.png      at the end
"""

from __future__ import annotations

import math
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from genlab.training.batches import Batches, load_run_split
from genlab.training.best_checkpoint import settle_best
from genlab.training.distributed import (
    DistEnv,
    barrier,
    check_same_weights,
    gather_objects,
    init_distributed,
    share_training,
    shutdown,
)
from genlab.training.ema import averaged_decoder, decoder_average
from genlab.training.epoch_report import close_epoch, epoch_line
from genlab.training.final_fit import FinalFit
from genlab.training.interrupt import stop_on_sigint
from genlab.training.metrics_log import MetricsLog
from genlab.training.plots import plot_loss_curves
from genlab.training.quality_watch import QualityWatch, Verdict, quality_tracker
from genlab.training.run_configs import RESUME_OVERRIDABLE, conditional_config, new_run_configs, resumed_run_configs
from genlab.training.run_summary import run_summary
from genlab.training.sample_grids import SampleGrids, decode_uint8
from genlab.training.step_log import StepLog, TrainingDiverged
from tqdm import tqdm

from genlab import checkpoint
from genlab.checkpoint import Fitted, Progress, RunState
from genlab.config import ModelConfig, TrainConfig, resolve_epochs
from genlab.data import dataset_hash, summary_line
from genlab.files import remove_stale_temps
from genlab.models import GenerativeModel, build_model
from genlab.run_dir import BEST_CHECKPOINT, LAST_CHECKPOINT


class Trainer:
    """One rank's part of the run in ``run_dir``: a new run, or the one ``state`` holds, continued exactly."""

    def __init__(self, mc: ModelConfig, tc: TrainConfig, run_dir: Path, env: DistEnv, state: RunState | None = None):
        self.run_dir, self.env = run_dir, env
        self.ckpt_path, self.best_path = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        if env.is_main:  # a run killed while writing left a temp file beside its last complete artifact
            for path in (self.ckpt_path, self.best_path, self.log.path):
                remove_stale_temps(path)
        self.train_data, self.val_data = load_run_split(tc, mc, "train"), load_run_split(tc, mc, "val")
        self.dataset_hash = dataset_hash(tc.dataset) if env.is_main else None  # for the main rank's checkpoints
        self.mc = mc = conditional_config(mc, tc, self.train_data) if mc.conditional else mc
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model: GenerativeModel = build_model(mc).to(env.device)
        if env.is_main:  # once the data fits the model: a refused configuration stays one error line
            tqdm.write(summary_line(self.train_data, self.val_data, tc.normal_class), file=sys.stderr)
        self.optimizers = self.model.configure_optimizers(tc.lr, (tc.beta1, tc.beta2))
        share_training(self.model, self.optimizers, env)
        self.ema = decoder_average(self.model, tc.ema)
        torch.manual_seed(tc.seed + 7919 * (env.rank + 1))  # per-rank noise streams
        self.batches = Batches(self.train_data, tc, env)
        self.tc = tc = resolve_epochs(tc, self.batches.per_epoch)
        self.grids = SampleGrids(self.model, mc, tc, self.val_data, run_dir)
        self.at = Progress()
        self.fitted: Fitted | None = None  # what the end of training fits; None until then
        self.best_epoch: int | None = None  # the epoch best.pt holds once the run ended (training.best_checkpoint)
        tracker = quality_tracker(self.model, mc, tc, self.val_data) if env.is_main and tc.quality_every > 0 else None
        self.watch = QualityWatch(tracker)
        self.final_fit = FinalFit(mc, tc, (self.train_data, self.val_data), tracker, env.device)
        self.steps = StepLog(env, self.log, self.ckpt_path, tc.lr)
        if state is not None:
            self._restore(state)

    # -- checkpoint -----------------------------------------------------------------------
    def _state(self, rng: list[dict[str, torch.Tensor]], complete: bool) -> RunState:
        """What last.pt holds now (``rng``: every rank's random state)."""
        return RunState(
            model_config=self.mc,
            train_config=self.tc,
            class_names=list(self.train_data.class_names),
            num_train=len(self.train_data),
            num_val=len(self.val_data),
            progress=self.at,
            model=self.model.state_dict(),
            optimizers={name: optimizer.state_dict() for name, optimizer in self.optimizers.items()},
            ema=None if self.ema is None else self.ema.state_dict(),
            rng=rng,
            world_size=self.env.world_size,
            quality=self.watch.state_dict(),
            fitted=self.fitted,
            complete=complete,
            dataset_hash=self.dataset_hash,
        )

    def save(self, complete: bool = False, best: bool = False) -> None:
        """Write last.pt (with ``best``, best.pt too); every rank must call it."""
        rng = gather_objects(self.env, checkpoint.rng_state(self.env.device))
        check_same_weights(self.env, self.model)
        if self.env.is_main:
            self.log.flush()
            payload = self._state(rng, complete).to_checkpoint()
            checkpoint.save_checkpoint(payload, self.ckpt_path)
            if best:
                checkpoint.save_checkpoint(payload, self.best_path)
        barrier(self.env)

    def _restore(self, state: RunState) -> None:
        """Continue ``state``: weights, optimizers, EMA, random streams, position, quality watch and fit."""
        checkpoint.load_weights(self.model, state.model, self.mc.family)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state.optimizers[name])
        if self.ema is not None:
            self.ema.load_state_dict(state.ema)
        if len(state.rng) == self.env.world_size:
            checkpoint.set_rng_state(state.rng[self.env.rank], self.env.device)
        self.at = state.progress
        self.fitted = self._still_fits(state.fitted)
        self.watch.load_state_dict(state.quality)
        if self.env.is_main:
            self.log.truncate_after(self.at.step)

    def _still_fits(self, fitted: Fitted | None) -> Fitted | None:
        """A resumed run's fit where this genlab's scores match it; None: fit and calibrate again at the end."""
        if fitted is None:
            return None
        try:
            self.model.score_fit.load(fitted.score_fit)
        except ValueError:  # fitted for other score definitions (an older genlab)
            return None
        missing = set(self.model.descriptions()) - fitted.calibrated_scores
        return None if missing else fitted  # calibrated before a score component was added

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the last epoch (or the step limit, or Ctrl-C), then end the run; returns its summary."""
        if self.at.epoch >= self.tc.epochs and self.fitted is not None:
            return self.summary("already complete")
        self.fitted = None  # the weights will change: fit and calibrate again at the end
        stopped = None
        self.model.train()
        with stop_on_sigint() as sigint:
            while self.at.epoch < self.tc.epochs and stopped is None:
                stopped = self._train_epoch(sigint)
                improved = self.at.batch == self.batches.per_epoch and self._end_epoch()
                self.save(best=improved)
        if stopped is None:
            self._end_run()
        return self.summary(stopped)

    def _train_epoch(self, sigint: dict[str, bool]) -> str | None:
        """The open epoch's remaining steps; returns why they stopped early ("max_steps", "interrupted") or None."""
        tc, at, per_epoch = self.tc, self.at, self.batches.per_epoch
        limit = math.inf if tc.max_steps is None else tc.max_steps
        order = self.batches.order(at.epoch)
        bar = tqdm(
            total=per_epoch,
            initial=at.batch,
            desc=f"epoch {at.epoch + 1}/{tc.epochs}",
            disable=not self.env.is_main,
            leave=False,
            dynamic_ncols=True,
        )
        self.steps.open(at.step)
        stopped = "max_steps" if at.batch < per_epoch and at.step >= limit else None
        while at.batch < per_epoch and stopped is None:
            x, y = self.batches.get(order, at.epoch, at.batch)
            self.steps.add(self.model.train_step(x, y, self.optimizers), len(x))
            if self.ema is not None:
                self.ema.update_parameters(self.model.decoder)
            at.batch += 1
            at.step += 1
            bar.update(1)
            stopped = "interrupted" if sigint["stop"] else "max_steps" if at.step >= limit else None
            if stopped or len(self.steps) >= tc.log_every or at.batch == per_epoch:
                self.steps.flush(at, bar)
        bar.close()
        return stopped

    def _end_epoch(self) -> bool:
        """Close the epoch: its record, sample quality, grids and line. Returns whether quality reached a new best."""
        record = close_epoch(self.at)
        verdict = self._judge_quality()
        if verdict is not None:
            record.update(verdict.values)
        self.at.epoch_history.append(record)
        improved = verdict is not None and verdict.improved
        if self.env.is_main:
            self.log.add({"kind": "epoch", **record})
            with self._averaged():
                self.grids.write_epoch(self.at.epoch)
            if verdict is not None and verdict.warning:
                tqdm.write(verdict.warning, file=sys.stderr)
            tqdm.write(epoch_line(record, self.tc.epochs, improved), file=sys.stderr)
        return improved

    def _judge_quality(self) -> Verdict | None:
        """Every quality_every epochs the main rank measures the averaged samples; every rank learns the verdict."""
        measured = None
        if self.watch.tracker is not None and self.at.epoch % self.tc.quality_every == 0:
            with self._averaged():
                measured = self.watch.measure(self._decode)
        measured = gather_objects(self.env, measured)[0]
        return None if measured is None else self.watch.judge(self.at.epoch, measured, str(self.best_path))

    def _end_run(self) -> None:
        """The fits on the averaged weights, samples.png from the fitted prior and the loss curves; then last.pt,
        complete, and best.pt's final form."""
        env = self.env
        if env.is_main:
            with self._averaged():
                self.fitted = self.final_fit(self.model, f"{LAST_CHECKPOINT}, epoch {self.at.epoch}")
                if self.fitted.prior is not None:
                    self.grids.write_prior_samples(self.fitted.prior)
            title = f"{self.mc.family} on {self.tc.dataset}"
            plot_loss_curves(self.log.read(), self.run_dir / "loss_curves.png", title)
        self.fitted = gather_objects(env, self.fitted)[0]
        self.model.score_fit.load(self.fitted.score_fit)
        self.save(complete=True)
        lowest = self.watch.state.best_epoch
        if env.is_main and lowest is not None:
            self.best_epoch = settle_best(self.run_dir, lowest, self.at.epoch, self.fitted, self.final_fit, env.device)
        barrier(env)  # the other ranks wait for the main rank's best.pt, so no rank tears down the group early

    def _averaged(self) -> AbstractContextManager[None]:
        """Inside, the decoder holds the EMA weights (what samples, quality, calibration and exports use)."""
        return averaged_decoder(self.model, self.ema)

    def _decode(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return decode_uint8(self.model, z, y, self.env.device)

    def summary(self, stopped: str | None) -> dict[str, Any]:
        return run_summary(
            self.mc,
            self.tc,
            self.run_dir,
            self.env.world_size,
            self.at,
            stopped,
            self.fitted,
            self.watch.state,
            self.best_epoch,
        )


def _train_in_process_group(mc: ModelConfig, tc: TrainConfig, run_dir: Path, state: RunState | None) -> dict[str, Any]:
    env = init_distributed(tc.device)
    try:
        return Trainer(mc, tc, run_dir, env, state).run()
    finally:
        shutdown(env)


def train(family: str, model_overrides: dict[str, Any], tc: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train a new run into ``run_dir``; returns a JSON-friendly summary."""
    mc, tc = new_run_configs(family, model_overrides, tc, Path(run_dir))
    return _train_in_process_group(mc, tc, Path(run_dir), None)


def resume(family: str, run_dir: str | Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue the run saved in ``run_dir`` exactly where it stopped, with its own configuration except
    ``changes`` to RESUME_OVERRIDABLE fields (e.g. ``{"epochs": 50}`` to train longer)."""
    mc, tc, state = resumed_run_configs(family, Path(run_dir), dict(changes or {}))
    return _train_in_process_group(mc, tc, Path(run_dir), state)


__all__ = [
    "RESUME_OVERRIDABLE",
    "Trainer",
    "TrainingDiverged",
    "new_run_configs",
    "resume",
    "resumed_run_configs",
    "train",
]
