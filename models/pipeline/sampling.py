"""The diffusion loop's step callback → the pipeline's `Progress` reports (`models.contract`)."""

from __future__ import annotations

from models.contract import Progress, ProgressCallback
from models.diffusion import StepCallback


def stage_reporter(progress: ProgressCallback | None, stage: str) -> StepCallback | None:
    """The diffusion loop's `(done, total)` callback that reports `stage` to `progress`."""
    if progress is None:
        return None

    def on_step(done: int, total: int) -> None:
        progress(Progress(stage, done, total))

    return on_step
