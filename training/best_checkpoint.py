"""best.pt at the end of a run: the checkpoint to serve, fitted, calibrated, marked complete, and one sentence on why.

During training best.pt follows the epoch whose N(0, I) samples measured best (lowest ``fd``), but exports sample
the fitted prior, and closer than COLLAPSE_FACTOR the lenet FD does not rank two checkpoints the way a person or
Inception would (docs/models.md, "best.pt"). So best.pt becomes the last epoch unless the last epoch's fitted-prior
samples measure more than COLLAPSE_FACTOR times as far as that epoch's: the checkpoint a run that collapsed or
drifted away from its best keeps, which is what best.pt is for. The sentence is printed and kept in best.pt
(``selection``), where ``genlab info`` shows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from genlab.training.final_fit import FinalFit
from genlab.training.quality_watch import COLLAPSE_FACTOR
from tqdm import tqdm

from genlab import checkpoint
from genlab.checkpoint import Fitted, RunState
from genlab.quality import N01_SAMPLES, PRIOR_SAMPLES
from genlab.run_dir import BEST_CHECKPOINT, LAST_CHECKPOINT


def settle_best(
    run_dir: Path, best_epoch: int, last_epoch: int, last: Fitted, final_fit: FinalFit, device: torch.device
) -> int:
    """Write best.pt's final form beside the complete last.pt (whose fit is ``last``); returns its epoch."""
    last_path, best_path = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    if best_epoch == last_epoch:  # the last epoch was the best: the same weights
        best = checkpoint.load_run_state(last_path)
        why = f"{BEST_CHECKPOINT} holds the last epoch, {last_epoch}, whose {N01_SAMPLES} also measured best"
    else:
        ckpt = checkpoint.load_checkpoint(best_path)
        best = RunState.from_checkpoint(ckpt)
        best.fitted = final_fit(checkpoint.model_from_checkpoint(ckpt, device), f"epoch {best_epoch}")  # its weights
        best.complete = True
        why = selection(last.prior_fd, best.fitted.prior_fd, best_epoch, last_epoch)
        if keeps_the_last(last.prior_fd, best.fitted.prior_fd):
            best, best_epoch = checkpoint.load_run_state(last_path), last_epoch
    tqdm.write(why, file=sys.stderr)
    checkpoint.save_checkpoint({**best.to_checkpoint(), "selection": why}, best_path)
    return best_epoch


def keeps_the_last(last_fd: float | None, best_fd: float | None) -> bool:
    """Whether the last epoch's fitted-prior samples measure within COLLAPSE_FACTOR of the best epoch's, or better."""
    return last_fd is not None and best_fd is not None and last_fd <= COLLAPSE_FACTOR * best_fd


def selection(last_fd: float | None, best_fd: float | None, best_epoch: int, last_epoch: int) -> str:
    """The one sentence that says which epoch best.pt holds and why."""
    lowest = f"epoch {best_epoch}, whose {N01_SAMPLES} measured best"
    if last_fd is None or best_fd is None:
        return f"{BEST_CHECKPOINT} holds {lowest} ({PRIOR_SAMPLES} were not measured)"
    figures = f"fd {last_fd:.3g} against {best_fd:.3g}"
    if not keeps_the_last(last_fd, best_fd):
        return (
            f"{BEST_CHECKPOINT} holds {lowest}: the last epoch's {PRIOR_SAMPLES} measure more than "
            f"{COLLAPSE_FACTOR:g}x as far ({figures}), so the run drifted away from it"
        )
    if last_fd <= best_fd:
        return (
            f"{BEST_CHECKPOINT} holds the last epoch, {last_epoch}: its {PRIOR_SAMPLES} measure closer than those of "
            f"{lowest} ({figures})"
        )
    return (
        f"{BEST_CHECKPOINT} holds the last epoch, {last_epoch}, rather than {lowest}: their {PRIOR_SAMPLES} measure "
        f"within {COLLAPSE_FACTOR:g}x of each other ({figures}), closer than this FD ranks checkpoints reliably"
    )
