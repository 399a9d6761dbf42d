"""How far an evaluation is: images processed out of the images it has to process.

An evaluation counts every image it generates (or reconstructs) and every image whose features it
extracts, and calls ``report(done, total)`` after each batch: the jobs service stores that (and
stops a cancelled job there, by raising from ``report``); the command line shows a bar. Under
torchrun each process counts its own share, scaled by the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable

Report = Callable[[int, int], None]


class Progress:
    def __init__(self, total: int, report: Report | None = None, bar: bool = False, scale: int = 1):
        self.total, self.done, self.scale = int(total), 0, int(scale)
        self.report = report
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", leave=False, dynamic_ncols=True, desc="evaluating")

    def __call__(self, count: int) -> None:
        step = min(int(count) * self.scale, self.total - self.done)
        self.done += step
        if self.bar is not None:
            self.bar.update(step)
        if self.report is not None:
            self.report(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
