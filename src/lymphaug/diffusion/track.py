"""MLflow child runs for the diffusion stages (under the pipeline's parent run)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lymphaug.common import tracking
from lymphaug.common.config import Params


def flat_params(prefix: str, section) -> dict[str, str]:
    """A config section as flat MLflow params ("finetune.learning_rate": "0.001")."""
    out: dict[str, str] = {}
    for key, value in section.model_dump().items():
        if isinstance(value, dict):
            out.update({f"{prefix}.{key}.{k}": str(v) for k, v in value.items()})
        else:
            out[f"{prefix}.{key}"] = str(value)
    return out


@contextmanager
def child_run(params: Params, root: Path, name: str, *, fold: int) -> Iterator[str]:
    """Start child run ``name fold=<f>`` (replacing an earlier one) and make it the active run."""
    with tracking.stage_run(params, root, name, fold=fold) as run_id:
        yield run_id


class MetricBuffer:
    """Per-step metrics, written in batches (one SQLite transaction per flush, not per step)."""

    def __init__(self, run_id: str, every: int = 25):
        self.run_id, self.every, self.pending = run_id, every, []

    def add(self, step: int, **values: float) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self.pending) >= self.every * len(values):
            self.flush()

    def flush(self) -> None:
        from mlflow.tracking import MlflowClient

        if self.pending:
            MlflowClient().log_batch(self.run_id, metrics=self.pending)
            self.pending = []
