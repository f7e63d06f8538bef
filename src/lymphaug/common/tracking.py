"""MLflow plumbing shared by the stages that log: one parent run per pipeline execution.

DVC runs each stage as its own process, so the parent run cannot be held open by
one of them. Instead every stage finds (or creates) the parent run tagged with the
pipeline key: a hash of the git commit and params.yaml, or ``LYMPHAUG_PIPELINE_ID``
when set. Children are named explicitly (``train base seed=0``); rerunning a stage
replaces its earlier child under the same parent, so the compare view never shows
orphans or duplicates. Each child that ends moves the parent's end time forward
(:func:`extend_parent`), so the parent's duration covers its children.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lymphaug.common.config import MlflowConfig
from lymphaug.common.errors import LymphaugError

PIPELINE_KEY_TAG = "lymphaug.pipeline_key"
# Earlier MLflow 3 UIs open an experiment on the page its kind names; untagged, they guess
# "GenAI" and show an empty traces page. These are model-training runs. (MLflow 3.17's UI
# ignores the tag for a per-browser GenAI / Model training switch: the README says how.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
ROLE_TAG = "lymphaug.role"
PARENT_TAG = "mlflow.parentRunId"


# MLflow retries an HTTP call 7 times with growing back-off (about 4 minutes) and waits up
# to 120 s for each answer: a server that died mid-training hung the stage for ~8 minutes.
# The project's bounds, used unless the user set these variables: retries over a blip of a
# few seconds (connection refused: ~7 s in all), 30 s for an answer (an upload included).
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(LymphaugError):
    """The MLflow tracking server cannot be used."""


def bound_http_retries() -> None:
    """Set :data:`HTTP_BOUNDS` for every variable the user has not set."""
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)


@contextmanager
def no_retries() -> Iterator[None]:
    """One try, 5 s: for a last call to a server already found dead (marking a run failed)."""
    saved = {k: os.environ.get(k) for k in HTTP_BOUNDS}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def best_effort(*, server_down: bool = False) -> Iterator[None]:
    """Marking runs failed after an error: a tracking failure here is dropped, never raised
    over the real error (one 5 s try when the server is already known to be down)."""
    try:
        with no_retries() if server_down else nullcontext():
            yield
    except Exception as err:
        if not is_tracking_failure(err):
            raise


def is_tracking_failure(err: BaseException) -> bool:
    """An error of the store or the server (not one of ours): MLflow's, or the HTTP layer's."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    return isinstance(err, (MlflowException, RequestException, ConnectionError, TimeoutError))


def _reason(err: BaseException) -> str:
    text = str(err)
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return "no answer in time"
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return first[:200] + ("..." if len(first) > 200 else "")


@contextmanager
def talking_to(uri: str, what: str) -> Iterator[None]:
    """Turn a failure of the tracking store during ``what`` into one TrackingError naming it."""
    try:
        yield
    except Exception as err:
        if isinstance(err, LymphaugError) or not is_tracking_failure(err):
            raise
        raise TrackingError(
            f"MLflow tracking server {uri} stopped answering while {what} ({_reason(err)})"
        ) from None


def tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """MLFLOW_TRACKING_URI wins, then params, then a SQLite store in the repository."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    return uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any long computation, when an HTTP tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status >= 400:
                raise TrackingError(f"MLflow tracking server {uri} answered HTTP {resp.status}")
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({err}); start it, or unset "
            "MLFLOW_TRACKING_URI / mlflow.tracking_uri to log to the local SQLite store"
        ) from None


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pipeline_key(root: Path, params_path: Path | None = None) -> str:
    """Identify one pipeline execution: same commit + same params -> same parent run."""
    if key := os.environ.get("LYMPHAUG_PIPELINE_ID"):
        return key
    params_path = params_path or root / "params.yaml"
    text = params_path.read_bytes() if params_path.is_file() else b""
    digest = hashlib.sha256(git_commit(root).encode() + b"\0" + text).hexdigest()
    return digest[:16]


def setup(cfg: MlflowConfig, root: Path):
    """Point MLflow at the configured store, check it answers; return (client, experiment_id)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg, root)
    bound_http_retries()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp:
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) != value:  # an experiment made before the tag existed
                client.set_experiment_tag(exp.experiment_id, key, value)
        return client, exp.experiment_id
    # A local store keeps its artifacts beside it, not wherever the process happened to start.
    artifacts = (root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    exp_id = client.create_experiment(
        cfg.experiment, artifact_location=artifacts, tags=dict(EXPERIMENT_KIND)
    )
    return client, exp_id


def parent_run_name(root: Path, key: str) -> str:
    """What a user recognises a pipeline execution by: DVC's experiment name, the commit.

    ``dvc exp run`` names its experiment in DVC_EXP_NAME; a plain ``dvc repro`` has none.
    The key's first characters tell apart two executions on one commit with other params.
    """
    what = os.environ.get("DVC_EXP_NAME") or "dvc repro"
    return f"{what} @ {git_commit(root)[:7]} ({key[:6]})"


def parent_run_id(client, experiment_id: str, key: str, root: Path | None = None) -> str:
    """Find or create the parent run of pipeline execution ``key`` (named by
    :func:`parent_run_name` when ``root`` is given)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'parent'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=parent_run_name(root, key) if root is not None else f"pipeline {key[:8]}",
        tags={PIPELINE_KEY_TAG: key, ROLE_TAG: "parent", **(run_tags(root) if root else {})},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def extend_parent(client, parent_id: str, *, failed: bool = False) -> None:
    """Move the parent run's end to now, after one of its children ended (or compare logged).

    Why not keep the parent RUNNING until compare ends: no stage knows it is the last (DVC
    may stop after any stage, on a failure or with ``dvc repro train-base@0``), and a
    parent left RUNNING would show as running forever. So the parent is created ended and
    each ending child pushes its end forward: its duration runs from the first stage's
    start to the last stage's end. Its status is the last child's (FAILED until a rerun of
    the failed stage finishes). Never earlier than an end already recorded: two stages of
    one pipeline may end out of order.
    """
    end = client.get_run(parent_id).info.end_time or 0
    status = "FAILED" if failed else "FINISHED"
    client.set_terminated(parent_id, status=status, end_time=max(end, int(time.time() * 1000)))


def fresh_child_run_id(
    client, experiment_id: str, parent_id: str, name: str, tags: dict[str, str] | None = None
) -> str:
    """Create child run ``name`` under the parent, deleting an earlier one of the same name."""
    for old in client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.run_name = '{name}'",
    ):
        client.delete_run(old.info.run_id)
    all_tags = {PARENT_TAG: parent_id, ROLE_TAG: "child", **(tags or {})}
    return client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id


def flatten(prefix: str, value: object) -> dict[str, str]:
    """Nested params -> {"train.arch": "alexnet", ...} (MLflow params are flat strings)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)}


def all_params(params) -> dict[str, str]:
    """Every section of params.yaml as flat MLflow params, the same keys in every run.

    Why: each stage logged only its own sections, so MLflow's compare view showed
    "unknown" for the others (a base run had no finetune params). Stage-specific values
    (condition, seed) are added by the stage. ``mlflow`` (where to log) is left out.
    """
    flat = flatten("", params.model_dump(exclude={"mlflow", "classes"}))
    return {"classes": ",".join(params.classes), **flat}


@contextmanager
def stage_run(
    params, root: Path, name: str, tags: dict[str, str] | None = None, *, fold: int | None = None
) -> Iterator[str]:
    """Child run ``name`` under the pipeline's parent (an earlier one of that name replaced),
    active while the block runs, with :func:`all_params`; FAILED if the block raises.

    A per-fold stage passes ``fold``: the run is named ``<name> fold=<f>`` (each fold its own
    child, not one replacing another) and has ``fold`` as a param and a tag."""
    import mlflow

    extra = {} if fold is None else {"fold": str(fold)}
    if fold is not None:
        name, tags = fold_run_name(name, fold), {**(tags or {}), **extra}
    client, exp_id = setup(params.mlflow, root)
    uri = tracking_uri(params.mlflow, root)
    with talking_to(uri, f"creating the run {name!r}"):
        parent = parent_run_id(client, exp_id, pipeline_key(root), root)
        run_id = fresh_child_run_id(client, exp_id, parent, name, run_tags(root, tags))
    try:
        with mlflow.start_run(run_id=run_id):
            with talking_to(uri, f"logging the params of {name!r}"):
                mlflow.log_params({**extra, **all_params(params)})
            yield run_id
    except BaseException as err:
        with best_effort(server_down=isinstance(err, TrackingError)):
            extend_parent(client, parent, failed=True)
        raise
    with talking_to(uri, f"ending the run {name!r}"):
        extend_parent(client, parent)


def fold_run_name(name: str, fold: int) -> str:
    """``dct fold=0``: one child run per stage and fold under the pipeline's parent."""
    return f"{name} fold={fold}"


def run_tags(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Tags every logging stage sets: git commit and DVC's experiment name when present."""
    tags = {"mlflow.source.git.commit": git_commit(root), **(extra or {})}
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = name
    return tags


def log_dataset(df, *, path: Path, name: str, digest: str, context: str) -> None:
    """Log a manifest as an MLflow dataset input of the active run (digest: its sha256)."""
    import mlflow

    # (its two warnings, "source can be interpreted in multiple ways" and the integer-column
    # schema hint, are silenced by common/quiet.py, which says why)
    dataset = mlflow.data.from_pandas(df, source=str(path), name=name, digest=digest[:36])
    mlflow.log_input(dataset, context=context)
