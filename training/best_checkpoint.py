"""best.pt at the end of a run: the epoch whose samples measured best, fitted, calibrated and marked complete.

The epoch was chosen on N(0, I) draws, but exports sample the fitted prior, and closer than
COLLAPSE_FACTOR the lenet FD does not rank two checkpoints the way a person or Inception would
(README "Sample quality"). So best.pt becomes the last epoch unless the last epoch's fitted-prior
samples measure far below best.pt's: the checkpoint a run that collapsed or oscillated away from
its best keeps, which is what best.pt is for.
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
from genlab.run_dir import BEST_CHECKPOINT, LAST_CHECKPOINT


def settle_best(
    run_dir: Path, best_epoch: int, last_epoch: int, last: Fitted, final_fit: FinalFit, device: torch.device
) -> int:
    """Write best.pt's final form beside the complete last.pt (whose fit is ``last``); returns its epoch."""
    last_path, best_path = run_dir / LAST_CHECKPOINT, run_dir / BEST_CHECKPOINT
    if best_epoch == last_epoch:  # the last epoch was the best: the same weights
        best = checkpoint.load_run_state(last_path)
    else:
        ckpt = checkpoint.load_checkpoint(best_path)
        best = RunState.from_checkpoint(ckpt)
        best.fitted = final_fit(checkpoint.model_from_checkpoint(ckpt, device), BEST_CHECKPOINT)  # its own weights
        best.complete = True
        if _keeps_the_last(last.prior_fd, best.fitted.prior_fd, best.epoch, last_epoch):
            best, best_epoch = checkpoint.load_run_state(last_path), last_epoch
    checkpoint.save_checkpoint(best.to_checkpoint(), best_path)
    return best_epoch


def _keeps_the_last(last_fd: float | None, best_fd: float | None, best_epoch: int, last_epoch: int) -> bool:
    """Whether the last epoch's fitted-prior samples measure within COLLAPSE_FACTOR of best.pt's, or better."""
    if last_fd is None or best_fd is None or last_fd > COLLAPSE_FACTOR * best_fd:
        return False
    verdict = "better than" if last_fd < best_fd else f"within {COLLAPSE_FACTOR:g}x of"
    tqdm.write(
        f"{BEST_CHECKPOINT}: the last epoch's fitted-prior samples measure {verdict} epoch {best_epoch}'s "
        f"(fd {last_fd:.4g} vs {best_fd:.4g}); {BEST_CHECKPOINT} is now epoch {last_epoch}",
        file=sys.stderr,
    )
    return True
