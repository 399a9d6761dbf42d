"""The one training loop. It knows nothing about model families: each family brings its
optimizers and its ``train_step``; the loop brings data, devices, logging, artifacts,
checkpoints, exact resume and anomaly calibration.

Run directory layout::

    RUN_DIR/last.pt              checkpoint (atomic; each epoch, on Ctrl-C, at --max-steps); ``--resume`` continues it
    RUN_DIR/metrics.jsonl        one record per step and per epoch
    RUN_DIR/samples/epoch_NNN.png        samples from fixed latents, each epoch
    RUN_DIR/samples/recon_epoch_NNN.png  held-out images (odd rows) and reconstructions (even rows)
    RUN_DIR/samples.png, RUN_DIR/reconstructions.png   the latest of each
    RUN_DIR/loss_curves.png      at the end
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from genlab.training.distributed import (
    DistEnv,
    average_gradients_before_step,
    barrier,
    broadcast_module,
    gather_objects,
    init_distributed,
    shutdown,
)
from genlab.training.metrics_log import MetricsLog
from genlab.training.plots import plot_loss_curves
from genlab.training.quality_watch import COLLAPSE_FACTOR, QualityWatch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from genlab import checkpoint
from genlab.calibration import fit_to_training_data
from genlab.config import ModelConfig, TrainConfig, resolve_epochs, to_dict
from genlab.data import ImageData, load_split, native_shape
from genlab.errors import GenlabError
from genlab.files import remove_stale_temps
from genlab.imageio import save_grid
from genlab.latents import balanced_labels, class_rows, sample_latents
from genlab.latents import describe as describe_prior
from genlab.models import GenerativeModel, build_model, model_class
from genlab.pixels import VALUE_RANGE, model_to_uint8, random_translate, uint8_to_model
from genlab.quality import QualityTracker, classifier_for
from genlab.quality import summary as quality_summary
from genlab.run_dir import BEST_CHECKPOINT, LAST_CHECKPOINT

# fields of TrainConfig that --resume may change; the rest come from the checkpoint
RESUME_OVERRIDABLE = ("epochs", "max_steps", "device", "log_every")
RECON_IMAGES = 32
GRID_PER_CLASS, GRID_MAX_CLASSES = 8, 16  # a conditional model's sample grid: one row of 8 per class (the first 16)
FITTED_KEYS = ("score_fit", "prior", "calibration", "prior_quality")  # checkpoint keys written after training


class TrainingDiverged(GenlabError):
    exit_code = 1


def _epoch_generator(seed: int, epoch: int, batch: int = -1) -> torch.Generator:
    """Stateless per-epoch (shuffle) and per-batch (augmentation) randomness: resumable anywhere."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + batch + 1)


def ema_with_warmup(decay: float):
    """AveragedModel's update for an EMA whose decay ramps up: min(decay, (1 + n) / (10 + n)) after n updates.

    A fixed decay of 0.999 still holds 0.999^1240 = 29% of the initial weights after the README's 20-epoch
    mnist-5k run, which measured as pure noise (benchmarks/sample_quality.py); the ramp (TensorFlow's
    ExponentialMovingAverage with num_updates) lets the average follow the early, fast-changing weights.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # batch norm's step counters follow the model
                a.copy_(c)

    return update


@contextmanager
def _stop_on_sigint() -> Iterator[dict[str, bool]]:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts at once."""
    state = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if state["stop"]:
            raise KeyboardInterrupt
        state["stop"] = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        previous = None
    try:
        yield state
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def new_run_configs(
    family: str, model_overrides: dict[str, Any], tc: TrainConfig, run_dir: Path
) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run in ``run_dir``: the dataset fixes image size and channels, the family its lr."""
    model_class(family)  # unknown family: clear error before any work
    if (run_dir / LAST_CHECKPOINT).exists():
        raise GenlabError(
            f"{run_dir} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it or choose another --out"
        )
    size, channels = native_shape(tc.dataset)
    mc = ModelConfig(**{"family": family, "image_size": size, "channels": channels, **model_overrides})
    if mc.class_weight is None:  # recorded in the checkpoint, so a later default does not change the run
        mc = dataclasses.replace(mc, class_weight=model_class(family).default_class_weight)
    if tc.lr is None:
        family_class = model_class(family)
        one_class_lr = family_class.one_class_lr if tc.normal_class is not None else None
        tc = dataclasses.replace(tc, lr=one_class_lr or family_class.default_lr)
    if tc.ema is None:
        tc = dataclasses.replace(tc, ema=model_class(family).default_ema)
    return mc, tc


def resumed_run_configs(
    family: str, run_dir: Path, changes: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The configs and state of the run saved in ``run_dir``: what the checkpoint says, except the
    RESUME_OVERRIDABLE fields in ``changes`` (the options the user typed); anything else is refused."""
    refused = sorted(set(changes) - set(RESUME_OVERRIDABLE))
    if refused:
        raise GenlabError(
            f"--resume keeps the run's configuration; {', '.join(refused)} cannot change "
            f"(only {', '.join(RESUME_OVERRIDABLE)} can)"
        )
    path = run_dir / LAST_CHECKPOINT
    if not path.exists():
        raise GenlabError(f"--resume: no checkpoint at {path}")
    state = checkpoint.load_checkpoint(path)
    if state["family"] != family:
        raise GenlabError(f"--resume: {path} holds a {state['family']} run, not {family}")
    tc = dataclasses.replace(checkpoint.train_config(state), **changes)
    return checkpoint.model_config(state), tc, state


class Trainer:
    def __init__(
        self, mc: ModelConfig, tc: TrainConfig, run_dir: Path, env: DistEnv, state: dict[str, Any] | None = None
    ):
        self.run_dir = run_dir
        self.env = env
        self.ckpt_path = run_dir / LAST_CHECKPOINT
        self.best_path = run_dir / BEST_CHECKPOINT
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        if env.is_main:  # a run killed while writing left a temp file beside its last complete artifact
            for path in (self.ckpt_path, self.best_path, self.log.path):
                remove_stale_temps(path)
        self.tc, self.mc = tc, mc

        self.train_data = self._load("train")
        self.val_data = self._load("val")
        if mc.conditional:
            self.mc = mc = self._conditional_config(mc)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model: GenerativeModel = build_model(mc).to(env.device)
        self.optimizers = self.model.configure_optimizers(tc.lr, (tc.beta1, tc.beta2))
        if env.enabled:
            broadcast_module(self.model)
            for optimizer in self.optimizers.values():
                average_gradients_before_step(optimizer, env.world_size)
        # the average of the decoder's weights (and batch-norm statistics) that samples and exports use
        self.ema = (
            AveragedModel(self.model.decoder, multi_avg_fn=ema_with_warmup(tc.ema), use_buffers=True)
            if tc.ema
            else None
        )
        torch.manual_seed(tc.seed + 7919 * (env.rank + 1))  # per-rank noise streams
        self.images = self.train_data.images.to(env.device)
        self.labels = self.train_data.labels.to(env.device)
        self.batches_per_epoch = len(self.images) // env.world_size // tc.batch_size
        if self.batches_per_epoch == 0:
            raise GenlabError(
                f"{tc.dataset}: {len(self.images)} training images is less than one batch of {tc.batch_size}"
                + (f" per process ({env.world_size} processes)" if env.enabled else "")
            )
        self.tc = tc = resolve_epochs(tc, self.batches_per_epoch)
        self.fixed_y = None  # a conditional model's grids: one row per class
        if mc.conditional:
            self.fixed_y = torch.from_numpy(class_rows(min(mc.num_classes, GRID_MAX_CLASSES), GRID_PER_CLASS))
        count = tc.sample_count if self.fixed_y is None else len(self.fixed_y)
        self.fixed_z = self.model.sample_latents(count, torch.Generator().manual_seed(tc.seed))
        pick = torch.randperm(len(self.val_data), generator=torch.Generator().manual_seed(tc.seed))[:RECON_IMAGES]
        self.recon_images = self.val_data.images[pick.sort().values]  # a fixed, class-mixed set
        self.recon_labels = self.val_data.labels[pick.sort().values]
        self.epoch, self.batch, self.step = 0, 0, 0
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self.epoch_history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        # what fit_to_training_data gives at the end of training (score_fit, prior, calibration) and the
        # sample quality measured with that prior; None until then
        self.fitted: dict[str, Any] | None = None
        self.watch = QualityWatch(self._quality_tracker() if env.is_main and tc.quality_every > 0 else None)
        if state is not None:
            self._restore(state)

    def _conditional_config(self, mc: ModelConfig) -> ModelConfig:
        """A conditional model takes the training data's classes (a resumed run must find the same number)."""
        data = self.train_data
        if self.tc.normal_class is not None:
            raise GenlabError(
                "--conditional cannot be combined with --normal-class: a one-class run has a single label"
            )
        if data.num_classes < 2:
            hint = " (pick a binary attribute with --condition-on ATTR, e.g. Male)" if data.dataset == "celeba" else ""
            raise GenlabError(f"--conditional needs class labels, and {data.dataset} has a single class{hint}")
        if mc.num_classes not in (0, data.num_classes):
            raise GenlabError(
                f"the run's model has {mc.num_classes} classes, {data.dataset} now has {data.num_classes}"
            )
        return dataclasses.replace(mc, num_classes=data.num_classes)

    def _quality_tracker(self) -> QualityTracker | None:
        """Fixed, seeded prior latents measured against the validation split (one-class runs: its class); a
        conditional model's for balanced, seeded labels."""
        classifier = classifier_for(
            self.tc.dataset,
            self.tc.data_dir,
            self.mc.image_size,
            self.mc.channels,
            seed=0,
            condition_on=self.tc.condition_on,
        )
        if classifier is None:
            tqdm.write(
                f"sample quality: not tracked ({self.tc.dataset} has no class labels for the reference classifier)",
                file=sys.stderr,
            )
            return None
        latents = self.model.sample_latents(self.tc.quality_samples, torch.Generator().manual_seed(self.tc.seed + 1))
        labels = self._quality_labels()
        return QualityTracker(classifier, self.val_data.images, latents.cpu(), labels)

    def _quality_labels(self) -> torch.Tensor | None:
        if not self.mc.conditional:
            return None
        return torch.from_numpy(balanced_labels(self.tc.quality_samples, self.mc.num_classes, self.tc.seed + 1))

    # -- data -----------------------------------------------------------------------------
    def _load(self, split: str) -> ImageData:
        data = load_split(
            self.tc.dataset,
            split,
            self.tc.data_dir,
            self.tc.download,
            self.mc.image_size,
            self.mc.channels,
            self.tc.condition_on,
        )
        if self.tc.normal_class is not None:
            data = data.only_class(self.tc.normal_class)
        return data

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        perm = torch.randperm(len(self.images), generator=_epoch_generator(self.tc.seed, epoch))
        return perm[self.env.rank :: self.env.world_size].to(self.env.device)

    def _batch(self, order: torch.Tensor, epoch: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.tc.batch_size
        index = order[b * bs : (b + 1) * bs]
        images = self.images[index]
        if self.tc.translate > 0:  # on uint8, before normalisation
            images = random_translate(
                images,
                self.tc.translate,
                _epoch_generator(self.tc.seed, epoch, b * self.env.world_size + self.env.rank),
            )
        return uint8_to_model(images), self.labels[index]

    # -- checkpoint -----------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.env.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.env.device)
        return state

    def _payload(self, complete: bool) -> dict[str, Any]:
        rng = gather_objects(self.env, self._rng_state())
        return {
            "family": self.mc.family,
            "model_config": to_dict(self.mc),
            "train_config": to_dict(self.tc),
            "data": {
                "dataset": self.tc.dataset,
                "split": "train",
                "image_size": self.mc.image_size,
                "channels": self.mc.channels,
                "value_range": list(VALUE_RANGE),
                "pixel_format": "uint8",
                "normal_class": self.tc.normal_class,
                "class_names": list(self.train_data.class_names),
                "condition_on": self.tc.condition_on,
                "translate": self.tc.translate,
                "num_train": len(self.train_data),
                "num_val": len(self.val_data),
            },
            "seed": self.tc.seed,
            "epoch": self.epoch,
            "step": self.step,
            "complete": complete,
            "world_size": self.env.world_size,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "ema": None if self.ema is None else {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
            "rng": {"ranks": [{k: v.cpu() for k, v in r.items()} for r in rng]},
            "position": {
                "epoch": self.epoch,
                "batch": self.batch,
                "sums": dict(self.epoch_sums),
                "count": self.epoch_count,
            },
            "metrics": {"epochs": self.epoch_history, "train_seconds": self.train_seconds},
            "quality": self.watch.state_dict(),
            **{key: (self.fitted or {}).get(key) for key in FITTED_KEYS},
        }

    def save(self, complete: bool = False, best: bool = False) -> None:
        """Write last.pt (or, with ``best``, best.pt); every rank must call it."""
        payload = self._payload(complete)  # every rank joins the gather inside
        if self.env.enabled:  # data parallelism keeps the weights identical on every rank
            sums = gather_objects(self.env, sum(float(p.detach().double().sum()) for p in self.model.parameters()))
            if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
                raise RuntimeError(f"ranks' weights diverged (parameter sums {sums}); gradient averaging is broken")
        if self.env.is_main:
            self.log.flush()
            checkpoint.save_checkpoint(payload, self.best_path if best else self.ckpt_path)
        barrier(self.env)

    def _restore(self, state: dict[str, Any]) -> None:
        checkpoint.load_weights(self.model, state["model"], self.mc.family)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        ranks = state["rng"]["ranks"]
        if len(ranks) == self.env.world_size:
            torch.set_rng_state(ranks[self.env.rank]["torch"])
            if "cuda" in ranks[self.env.rank] and self.env.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[self.env.rank]["cuda"], self.env.device)
        position = state["position"]
        self.epoch, self.batch, self.step = position["epoch"], position["batch"], state["step"]
        self.epoch_sums, self.epoch_count = dict(position["sums"]), position["count"]
        self.epoch_history = list(state["metrics"]["epochs"])
        self.train_seconds = state["metrics"]["train_seconds"]
        if all(state.get(key) is not None for key in ("score_fit", "calibration")):  # older checkpoints lack score_fit
            try:
                self.model.score_fit.load(state["score_fit"])
                self.fitted = {key: state.get(key) for key in FITTED_KEYS}
            except ValueError:  # fitted for other score definitions (an older genlab): fit again at the end
                self.fitted = None
            if set(type(self.model).score_descriptions) - set(state["calibration"]["scores"]):
                self.fitted = None  # calibrated before a score component was added: calibrate again at the end
        self.watch.load_state_dict(state.get("quality", {}))
        if self.env.is_main:
            self.log.truncate_after(self.step)

    # -- artifacts ------------------------------------------------------------------------
    @contextmanager
    def _averaged_decoder(self) -> Iterator[None]:
        """Inside, the model's decoder holds the EMA weights (what samples, quality, calibration and exports use)."""
        if self.ema is None:
            yield
            return
        training = {k: v.clone() for k, v in self.model.decoder.state_dict().items()}
        self.model.decoder.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            self.model.decoder.load_state_dict(training)

    @torch.no_grad()
    def _write_grids(self) -> None:
        self.model.eval()
        with self._averaged_decoder():
            samples = self._decode_uint8(self.fixed_z, self.fixed_y).numpy()
            row = None if self.fixed_y is None else GRID_PER_CLASS
            save_grid(samples, self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png", row)
            save_grid(samples, self.run_dir / "samples.png", row)
            if self.model.has_encoder:
                originals = self.recon_images
                y = self.recon_labels.to(self.env.device) if self.mc.conditional else None
                recon = model_to_uint8(self.model.reconstruct(uint8_to_model(originals.to(self.env.device)), y)).cpu()
                rows = [t for i in range(0, len(originals), 8) for t in (originals[i : i + 8], recon[i : i + 8])]
                grid = torch.cat(rows).numpy()
                save_grid(grid, self.run_dir / "samples" / f"recon_epoch_{self.epoch:03d}.png", nrow=8)
                save_grid(grid, self.run_dir / "reconstructions.png", nrow=8)
        self.model.train()

    # -- the loop -------------------------------------------------------------------------
    def _flush(
        self, pending: list[dict[str, torch.Tensor]], first_step: int, images: int, seconds: float, bar: tqdm
    ) -> None:
        names = list(pending[0])
        values = torch.stack([torch.stack([p[n] for n in names]) for p in pending]).float().cpu()
        if not torch.isfinite(values).all():
            bad_row, bad_col = map(int, torch.nonzero(~torch.isfinite(values))[0])
            raise TrainingDiverged(
                f"loss {names[bad_col]} became {values[bad_row, bad_col].item()} at step {first_step + bad_row + 1} "
                f"(epoch {self.epoch + 1}); stopped, {self.ckpt_path} keeps the last good checkpoint "
                f"(epoch {self.epoch}); try a lower learning rate, e.g. --set lr={self.tc.lr / 2:g}"
            )
        rate = images * self.env.world_size / max(seconds, 1e-9)
        for i, row in enumerate(values.tolist()):
            record = dict(zip(names, row))
            for n, v in record.items():
                self.epoch_sums[n] = self.epoch_sums.get(n, 0.0) + v
            self.epoch_count += 1
            if self.env.is_main:
                self.log.add(
                    {"kind": "step", "epoch": self.epoch + 1, "step": first_step + i + 1, **record, "img_per_s": rate}
                )
        if self.env.is_main:
            bar.set_postfix({**{n: f"{v:.3g}" for n, v in zip(names, values[-1].tolist())}, "img/s": f"{rate:,.0f}"})

    @torch.no_grad()
    def _decode_uint8(
        self, z: torch.Tensor, y: torch.Tensor | None = None, model: GenerativeModel | None = None
    ) -> torch.Tensor:
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        images = model_to_uint8(model.decode(z.to(self.env.device), None if y is None else y.to(self.env.device))).cpu()
        model.train(was_training)
        return images

    def _finish_epoch(self) -> bool:
        """Close the epoch: its record, grids and sample quality. Returns whether quality reached a new best."""
        summary = {n: s / max(self.epoch_count, 1) for n, s in self.epoch_sums.items()}
        self.epoch += 1
        self.batch = 0
        self.epoch_sums, self.epoch_count = {}, 0
        record = {"epoch": self.epoch, "step": self.step, **summary, "train_seconds": self.train_seconds}
        measured = None
        if self.watch.tracker is not None and self.epoch % self.tc.quality_every == 0:
            with self._averaged_decoder():
                measured = self.watch.measure(self._decode_uint8)
        measured = gather_objects(self.env, measured)[0]  # the main rank measures; every rank learns the verdict
        verdict = self.watch.judge(self.epoch, measured, str(self.best_path)) if measured is not None else None
        if verdict is not None:
            record.update(verdict.values)
        self.epoch_history.append(record)
        if self.env.is_main:
            self.log.add({"kind": "epoch", **record})
            self._write_grids()
            if verdict is not None and verdict.warning:
                tqdm.write(verdict.warning, file=sys.stderr)
        return verdict is not None and verdict.improved

    def fit(self) -> dict[str, Any]:
        tc, env = self.tc, self.env
        if self.epoch >= tc.epochs and self.fitted is not None:
            return self.summary(stopped="already complete")
        self.fitted = None  # weights will change: fit and calibrate again at the end
        stopped = None
        self.model.train()
        with _stop_on_sigint() as sigint:
            while self.epoch < tc.epochs and stopped is None:
                order = self._epoch_order(self.epoch)
                bar = tqdm(
                    total=self.batches_per_epoch,
                    initial=self.batch,
                    desc=f"epoch {self.epoch + 1}/{tc.epochs}",
                    disable=not env.is_main,
                    leave=False,
                    dynamic_ncols=True,
                )
                pending: list[dict[str, torch.Tensor]] = []
                window_start, window_images, first_step = time.perf_counter(), 0, self.step
                while self.batch < self.batches_per_epoch:
                    if tc.max_steps is not None and self.step >= tc.max_steps:
                        stopped = "max_steps"
                        break
                    x, y = self._batch(order, self.epoch, self.batch)
                    pending.append(self.model.train_step(x, y, self.optimizers))
                    if self.ema is not None:
                        self.ema.update_parameters(self.model.decoder)
                    self.batch += 1
                    self.step += 1
                    window_images += len(x)
                    bar.update(1)
                    stop_now = sigint["stop"] or (tc.max_steps is not None and self.step >= tc.max_steps)
                    if len(pending) >= tc.log_every or self.batch == self.batches_per_epoch or stop_now:
                        if env.device.type == "cuda":
                            torch.cuda.synchronize(env.device)
                        elapsed = time.perf_counter() - window_start
                        self.train_seconds += elapsed
                        self._flush(pending, first_step, window_images, elapsed, bar)
                        pending, first_step, window_images = [], self.step, 0
                        window_start = time.perf_counter()
                    if stop_now:
                        stopped = "interrupted" if sigint["stop"] else "max_steps"
                        break
                bar.close()
                improved = False
                if self.batch == self.batches_per_epoch:
                    improved = self._finish_epoch()
                    if env.is_main:
                        last = self.epoch_history[-1]
                        losses = ", ".join(
                            f"{k} {v:.4g}"
                            for k, v in last.items()
                            if k not in ("epoch", "step", "train_seconds") and not k.startswith("quality_")
                        )
                        quality = quality_summary(
                            {k[len("quality_") :]: v for k, v in last.items() if k.startswith("quality_")}
                        )
                        tqdm.write(
                            f"epoch {self.epoch}/{tc.epochs}: {losses}"
                            + (f"; {quality}" if quality else "")
                            + (" (best)" if improved else ""),
                            file=sys.stderr,
                        )
                self.save()
                if improved:
                    self.save(best=True)
        if stopped is None:
            if env.is_main:
                with self._averaged_decoder():
                    self.fitted = self._fit(self.model)
                    if self.fitted["prior"] is not None:  # samples.png as exports draw them: from the fitted prior
                        z = sample_latents(
                            len(self.fixed_z),
                            self.mc.latent_dim,
                            tc.seed,
                            prior=self.fitted["prior"],
                            labels=None if self.fixed_y is None else self.fixed_y.numpy(),
                        )
                        save_grid(
                            self._decode_uint8(torch.from_numpy(z), self.fixed_y).numpy(),
                            self.run_dir / "samples.png",
                            None if self.fixed_y is None else GRID_PER_CLASS,
                        )
                plot_loss_curves(self.log.read(), self.run_dir / "loss_curves.png", f"{self.mc.family} on {tc.dataset}")
            self.fitted = gather_objects(env, self.fitted)[0]
            self.model.score_fit.load(self.fitted["score_fit"])
            self.save(complete=True)
            if env.is_main and self.watch.state.best_epoch is not None:
                self._fit_best()
            barrier(env)  # the other ranks wait for the main rank's best.pt, so no rank tears down the group early
        return self.summary(stopped)

    def _fit(self, model: GenerativeModel, checkpoint_name: str = LAST_CHECKPOINT) -> dict[str, Any]:
        """:func:`fit_to_training_data`, plus the sample quality of the fitted prior (what exports generate)."""
        fitted = fit_to_training_data(model, self.train_data, self.val_data, self.env.device, self.tc.seed)
        fitted["prior_quality"] = None
        if fitted["prior"] is not None and self.watch.tracker is not None:
            labels = self.watch.tracker.labels
            latents = sample_latents(
                self.tc.quality_samples,
                self.mc.latent_dim,
                self.tc.seed + 1,
                prior=fitted["prior"],
                labels=None if labels is None else labels.numpy(),
            )
            measured = self.watch.tracker.measure(
                lambda z, y: self._decode_uint8(z, y, model), torch.from_numpy(latents)
            )
            fitted["prior_quality"] = {"prior": describe_prior(fitted["prior"]), **measured}
            tqdm.write(
                f"{checkpoint_name}: samples from the fitted latent prior: {quality_summary(measured)}", file=sys.stderr
            )
        return fitted

    def _fit_best(self) -> None:
        """best.pt gets its own fit and calibration (its weights are not the last ones) and is marked complete.

        The epoch was chosen on N(0, I) draws, but exports sample the fitted prior, and closer than
        COLLAPSE_FACTOR the lenet FD does not rank two checkpoints the way a person or Inception would
        (measured: a VAE-GAN's epoch 5 at fitted-prior FD 72 against epoch 20 at 108 exported at Inception
        KID 0.149 against 0.038, FID 137 against 54; README "Sample quality"). So best.pt becomes the last
        epoch unless the last epoch's fitted-prior samples measure far below best.pt's: the checkpoint a run
        that collapsed or oscillated away from its best keeps, which is what best.pt is for."""
        if self.watch.state.best_epoch == self.epoch:  # the last epoch was the best: the same weights
            best = {**checkpoint.load_checkpoint(self.ckpt_path)}
        else:
            best = checkpoint.load_checkpoint(self.best_path)
            model = checkpoint.model_from_checkpoint(best, self.env.device)
            best.update({key: value for key, value in self._fit(model, BEST_CHECKPOINT).items() if key in FITTED_KEYS})
            best["complete"] = True
            last_fd = (self.fitted["prior_quality"] or {}).get("fd")
            best_fd = (best.get("prior_quality") or {}).get("fd")
            if last_fd is not None and best_fd is not None and last_fd <= COLLAPSE_FACTOR * best_fd:
                verdict = "better than" if last_fd < best_fd else f"within {COLLAPSE_FACTOR:g}x of"
                tqdm.write(
                    f"{BEST_CHECKPOINT}: the last epoch's fitted-prior samples measure {verdict} epoch {best['epoch']}'s "
                    f"(fd {last_fd:.4g} vs {best_fd:.4g}); {BEST_CHECKPOINT} is now epoch {self.epoch}",
                    file=sys.stderr,
                )
                best = {**checkpoint.load_checkpoint(self.ckpt_path)}
                self.watch.state.best_epoch = self.epoch
        checkpoint.save_checkpoint(
            {k: v for k, v in best.items() if k not in ("format", "format_version", "genlab_version")}, self.best_path
        )

    def summary(self, stopped: str | None) -> dict[str, Any]:
        images_per_s = (
            self.step * self.tc.batch_size * self.env.world_size / self.train_seconds
            if self.train_seconds
            else math.nan
        )
        return {
            "family": self.mc.family,
            "dataset": self.tc.dataset,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.ckpt_path),
            "epoch": self.epoch,
            "epochs": self.tc.epochs,
            "step": self.step,
            "stopped": stopped,
            "train_seconds": round(self.train_seconds, 2),
            "images_per_s": round(images_per_s, 1) if not math.isnan(images_per_s) else None,
            "last_epoch": self.epoch_history[-1] if self.epoch_history else None,
            "prior_quality": (self.fitted or {}).get("prior_quality"),
            "samples": str(self.run_dir / "samples.png"),
            "max_steps": self.tc.max_steps,
            "best": None
            if self.watch.state.best_epoch is None
            else {
                "checkpoint": str(self.best_path),
                "epoch": self.watch.state.best_epoch,
                "quality_fd": self.watch.state.best_fd,
            },
            "world_size": self.env.world_size,
        }


def _run(mc: ModelConfig, tc: TrainConfig, run_dir: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    env = init_distributed(tc.device)
    try:
        return Trainer(mc, tc, run_dir, env, state).fit()
    finally:
        shutdown(env)


def train(family: str, model_overrides: dict[str, Any], tc: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train a new run into ``run_dir``; returns a JSON-friendly summary."""
    mc, tc = new_run_configs(family, model_overrides, tc, Path(run_dir))
    return _run(mc, tc, Path(run_dir), None)


def resume(family: str, run_dir: str | Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Continue the run saved in ``run_dir`` exactly where it stopped, with its own configuration except
    ``changes`` to RESUME_OVERRIDABLE fields (e.g. ``{"epochs": 50}`` to train longer)."""
    mc, tc, state = resumed_run_configs(family, Path(run_dir), dict(changes or {}))
    return _run(mc, tc, Path(run_dir), state)


__all__ = ["RESUME_OVERRIDABLE", "Trainer", "TrainingDiverged", "resume", "train"]
