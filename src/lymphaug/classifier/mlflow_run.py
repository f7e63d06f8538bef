"""One MLflow child run per (condition, fold, seed) under the pipeline's parent run.

The run is created before any data is decoded, so an unreachable tracking server
stops the stage in seconds. Per-epoch metrics are logged as they come with
``step=epoch`` (a resumed run re-logs the checkpointed epochs into its fresh child
run, so the curve is always complete and never duplicated). A server that stops
answering later is one :class:`~lymphaug.common.tracking.TrackingError` naming it,
after MLflow's retries, which the project bounds to seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from lymphaug.common import registry, tracking
from lymphaug.common.config import Params
from lymphaug.common.paths import Layout


def run_name(condition: str, fold: int, seed: int) -> str:
    return f"train {condition} fold={fold} seed={seed}"


def model_name(condition: str, fold: int, seed: int) -> str:
    """The logged model's name: MLflow's models page lists each by name, not many "model"s
    (the registered model is per condition: :func:`lymphaug.common.registry.registered_name`)."""
    return f"classifier-{condition}-fold{fold}-seed{seed}"


class ChildRun:
    """The MLflow child run of one training stage execution."""

    def __init__(self, params: Params, layout: Layout, condition: str, seed: int) -> None:
        self.condition, self.seed, self.root = condition, seed, layout.root
        self.fold = layout.fold
        self.uri = tracking.tracking_uri(params.mlflow, layout.root)
        self.client, self.experiment_id = tracking.setup(params.mlflow, layout.root)
        with tracking.talking_to(self.uri, "creating the run"):
            self.key = tracking.pipeline_key(layout.root)
            self.parent_id = tracking.parent_run_id(
                self.client, self.experiment_id, self.key, layout.root
            )
            tags = tracking.run_tags(
                layout.root, {"condition": condition, "fold": str(self.fold), "seed": str(seed)}
            )
            self.run_id = tracking.fresh_child_run_id(
                self.client,
                self.experiment_id,
                self.parent_id,
                run_name(condition, self.fold, seed),
                tags,
            )

    def log_setup(
        self,
        params: Params,
        *,
        condition: str,
        seed: int,
        manifests: dict[str, tuple[pd.DataFrame, Path, str]],
        tags: dict[str, str],
    ) -> None:
        """Params, data-set hash tags, and the data sets as MLflow inputs."""
        with tracking.talking_to(self.uri, "logging the run's params"):
            self._log_setup(params, condition=condition, seed=seed, manifests=manifests, tags=tags)

    def _log_setup(self, params: Params, *, condition: str, seed: int, manifests, tags) -> None:
        import mlflow

        # every section for every condition: the compare view has no "unknown" cells
        flat = {
            "condition": condition,
            "fold": str(self.fold),
            "seed": str(seed),
            **tracking.all_params(params),
        }
        with mlflow.start_run(run_id=self.run_id):
            mlflow.log_params(flat)
            mlflow.set_tags(tags)
            contexts = {"val": "validation", "test": "test"}
            for name, (df, path, digest) in manifests.items():
                tracking.log_dataset(
                    df,
                    path=path,
                    name=name,
                    digest=digest,
                    context=contexts.get(name, "training"),
                )
        self._reopen()

    def _reopen(self) -> None:
        # leaving start_run marks the run FINISHED; it is still running
        self.client.update_run(self.run_id, status="RUNNING")

    def log_epoch(self, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["epoch"])
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch"]
        with tracking.talking_to(self.uri, f"logging epoch {step}"):
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, metrics: dict, files: list[Path], model_dir: Path) -> None:
        """Test metrics and artifacts; the model as a registry version that references
        DVC's copy of the weights (common/registry.py says why); then end the run."""
        import mlflow

        flat = {k: metrics[k] for k in ("test_accuracy", "test_macro_f1", "best_val_acc")}
        for c, m in metrics["per_class"].items():
            for k in ("precision", "recall", "f1"):
                flat[f"test_{k}_{c}"] = m[k]
        flat["best_epoch"] = metrics["best_epoch"]
        ref = registry.reference(model_dir, self.root, tracking.git_commit(self.root))
        with (
            tracking.talking_to(self.uri, "logging the results and the model"),
            mlflow.start_run(run_id=self.run_id),
        ):
            mlflow.log_metrics(flat)
            for f in files:
                mlflow.log_artifact(str(f))
            model_id = registry.log_reference_model(
                self.client,
                experiment_id=self.experiment_id,
                run_id=self.run_id,
                name=model_name(self.condition, self.fold, self.seed),
                model_dir=model_dir,
                ref=ref,
            )
            self.version = registry.register_version(
                self.client,
                condition=self.condition,
                model_id=model_id,
                run_id=self.run_id,
                ref=ref,
                tags={
                    "fold": str(self.fold),
                    "seed": str(self.seed),
                    "best_val_acc": f"{metrics['best_val_acc']:.4f}",
                    "test_accuracy": f"{metrics['test_accuracy']:.4f}",
                    tracking.PIPELINE_KEY_TAG: self.key,
                },
            )
        with tracking.talking_to(self.uri, "ending the run"):
            tracking.extend_parent(self.client, self.parent_id)

    def fail(self, *, server_down: bool = False) -> None:
        """Mark the run FAILED when the store still answers; never raise over the real error."""
        with tracking.best_effort(server_down=server_down):
            self.client.set_terminated(self.run_id, status="FAILED")
            tracking.extend_parent(self.client, self.parent_id, failed=True)
