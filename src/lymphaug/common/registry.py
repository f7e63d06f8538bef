"""The classifiers in MLflow's model registry, their weights stored once: by DVC.

Every trained classifier becomes a version of the registered model
``lymphaug-classifier-<condition>`` (one version per seed and training run), and compare
puts the alias ``best`` on the version of the seed with the highest validation accuracy.

Why MLflow holds a reference and not the weights: DVC must have the file anyway (it
restores outputs on ``dvc checkout``/``dvc exp apply``, skips unchanged stages, and pushes
to the team's remote), so a second copy in MLflow's artifact store only doubled the disk
(six AlexNets were 1.4 GB twice). The reverse, DVC tracking what MLflow wrote, would make
the pipeline's outputs live under run-id-named folders that change on every run, and
``mlflow.pytorch.log_model`` pickles the whole module, which runs code when loaded; the
project's ``model.pt`` is a state dict read with ``weights_only=True``. So each version's
logged model holds ``model.json`` (how to rebuild the network) and ``dvc_reference.json``
(each file's path, md5 and size, the commit and DVC experiment that made it), and its tags
carry the weights' md5: the key DVC's cache and remotes store the file under. (The
diffusion model follows finetune's own rule: tags naming the DVC output, and a copy of the
weights only under 100 MiB; see finetune.log_model_reference.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lymphaug.common.files import md5_file

REFERENCE_FILE = "dvc_reference.json"
BEST_ALIAS = "best"
MD5_TAG = "model.md5"


def registered_name(condition: str) -> str:
    """One registered model per condition; its versions are the seeds' runs."""
    return f"lymphaug-classifier-{condition}"


def reference(folder: Path, root: Path, commit: str) -> dict:
    """Where DVC keeps each file of ``folder`` (a stage's output): md5, size, cache path;
    and the commit (and DVC experiment) that made it. What MLflow stores instead of a copy."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        md5 = md5_file(path)
        files[path.relative_to(folder).as_posix()] = {
            "md5": md5,
            "bytes": path.stat().st_size,
            "dvc_cache": f".dvc/cache/files/md5/{md5[:2]}/{md5[2:]}",
        }
    rel = folder.resolve().relative_to(root.resolve()).as_posix()
    return {
        "folder": rel,
        "files": files,
        "git_commit": commit,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        "get_it": f"dvc pull {rel} at that commit (or experiment), or copy each dvc_cache "
        "path from a clone or DVC remote that has it",
    }


def weights_md5(ref: dict) -> str:
    """A classifier's identity in the registry: the md5 of its model.pt."""
    return ref["files"]["model.pt"]["md5"]


def log_reference_model(
    client, *, experiment_id: str, run_id: str, name: str, model_dir: Path, ref: dict
) -> str:
    """A logged model (MLflow 3's Models tab) holding the reference, not the weights."""
    from mlflow.entities import LoggedModelOutput

    model = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags={MD5_TAG: weights_md5(ref)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / REFERENCE_FILE).write_text(json.dumps(ref, indent=2) + "\n")
        (Path(tmp) / "model.json").write_bytes((model_dir / "model.json").read_bytes())
        client.log_model_artifacts(model.model_id, tmp)
    client.finalize_logged_model(model.model_id, "READY")
    # the run's output: its page and the Models tab link run and model both ways
    client.log_outputs(run_id, [LoggedModelOutput(model_id=model.model_id, step=0)])
    return model.model_id


def register_version(
    client, *, condition: str, model_id: str, run_id: str, ref: dict, tags: dict[str, str]
):
    """A new version of ``lymphaug-classifier-<condition>`` pointing at the logged model."""
    from mlflow.exceptions import MlflowException

    name = registered_name(condition)
    try:
        client.create_registered_model(
            name,
            description=f"The `{condition}` classifier; one version per seed and run. Weights "
            f"are stored by DVC: each version's {REFERENCE_FILE} names the file and its md5. "
            f"Alias `{BEST_ALIAS}`: the best seed by validation accuracy, set by compare.",
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name,
        source=f"models:/{model_id}",
        run_id=run_id,
        model_id=model_id,
        tags={MD5_TAG: weights_md5(ref), "model.path": f"{ref['folder']}/model.pt", **tags},
        description=f"weights: {ref['folder']}/model.pt (md5 {weights_md5(ref)}, "
        f"{ref['files']['model.pt']['bytes']} bytes), stored by DVC at commit "
        f"{ref['git_commit'][:7]}",
    )


def best_seed(scores: dict[int, float]) -> int:
    """The seed with the highest validation accuracy; a tie goes to the lowest seed."""
    return min(scores, key=lambda seed: (-scores[seed], seed))


def mark_best(client, *, condition: str, scores: dict[int, float], md5s: dict[int, str]):
    """Alias ``best`` on the newest version holding the best seed's weights (by md5).

    Returns that version, or None when the registry has no version with those weights
    (a store other than the one the training runs logged to): the alias is left as it was.
    """
    candidates = {s: v for s, v in scores.items() if s in md5s}
    if not candidates:
        return None
    name = registered_name(condition)
    seed = best_seed(candidates)
    versions = client.search_model_versions(f"name = '{name}'")
    matching = [v for v in versions if v.tags.get(MD5_TAG) == md5s[seed]]
    if not matching:
        return None
    version = max(matching, key=lambda v: int(v.version))
    client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return version
