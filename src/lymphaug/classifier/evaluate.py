"""Test-set evaluation of the best epoch: metrics, per-image predictions, figures.

The per-image predictions CSV is what the comparison stage pairs across conditions
(same test images, same order), so it carries the path, the true class and the
per-class probabilities, not only the argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lymphaug.classifier.data import ImageSet
from lymphaug.classifier.model import Classifier, autocast, device_of
from lymphaug.classifier.transforms import eval_tensor, grid_patches, normalize, symmetries
from lymphaug.common.config import TrainConfig
from lymphaug.common.metrics import confusion_matrix, macro_f1, per_class_scores

PREDICTION_COLUMNS = ["path", "class", "label", "predicted", "predicted_class"]  # + prob_<class>


def eval_views(
    images: list[torch.Tensor], cfg: TrainConfig, *, symmetric: bool = False
) -> list[Sequence[torch.Tensor]]:
    """Per image, the uint8 views (``3 x h x w`` each) whose predictions are averaged.

    ``crop``: the study's resize + centre crop (one view); ``whole``: the whole rescaled
    image (one view; the model must pool globally); ``grid``: every patch of a grid
    covering the image, so no tissue is thrown away and the patch size matches training.
    ``symmetric``: every view also counts in its 8 rotations/flips (the symmetries
    training drew from; ``train.eval_symmetries`` asks it for the test split only, since
    it costs 8 forward passes per view). Computed once per evaluation set, not per epoch.
    """
    if cfg.eval == "crop":
        views = list(eval_tensor(images, cfg.input_size).unsqueeze(1))
    elif cfg.eval == "whole":
        views = [image.unsqueeze(0) for image in images]
    else:
        views = [grid_patches(image, cfg.patch_size) for image in images]
    if symmetric:  # a turned whole image changes shape: a list, not one tensor
        return [[s for view in image_views for s in symmetries(view)] for image_views in views]
    return views


def mean_over_views(
    fn: Callable[[torch.Tensor], torch.Tensor], views: list[Sequence[torch.Tensor]], *, batch: int
) -> torch.Tensor:
    """Per image (float64, N x D), the mean over its views of ``fn(normalised batch)``.

    Views of one shape are batched together whatever image they belong to, so a grid of
    patches or a set of equally sized whole images runs in few forward passes.
    """
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for owner, image_views in enumerate(views):
        for view in image_views:
            by_shape.setdefault(tuple(view.shape), []).append((owner, view))
    sums: torch.Tensor | None = None
    counts = torch.zeros(len(views), dtype=torch.float64)
    with torch.inference_mode():
        for items in by_shape.values():
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                rows = fn(normalize(torch.stack([view for _, view in chunk]))).cpu().double()
                if sums is None:
                    sums = torch.zeros(len(views), rows.shape[1], dtype=torch.float64)
                owners = torch.tensor([owner for owner, _ in chunk])
                sums.index_add_(0, owners, rows)
                counts.index_add_(0, owners, torch.ones(len(chunk), dtype=torch.float64))
    if sums is None:
        raise ValueError("no images to evaluate")
    return sums / counts[:, None]


def predict_proba(
    model: Classifier,
    views: list[Sequence[torch.Tensor]],
    *,
    batch: int = 64,
    precision: str = "fp32",
) -> np.ndarray:
    """Class probabilities per image (float64, N x C): the mean softmax over its views."""
    model.eval()
    device = device_of(model)

    def softmax(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return torch.softmax(model(x.to(device)).float(), dim=1)

    return mean_over_views(softmax, views, batch=batch).numpy()


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    scores = per_class_scores(cm)
    per_class = {
        c: {
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1": float(scores["f1"][i]),
            "support": int(scores["support"][i]),
        }
        for i, c in enumerate(classes)
    }
    return {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0,
        "macro_f1": macro_f1(cm),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def evaluate(
    model: Classifier,
    test: ImageSet,
    *,
    classes: list[str],
    cfg: TrainConfig,
    root: Path,
) -> tuple[dict, pd.DataFrame]:
    """(metrics dict, predictions DataFrame) of ``model`` on the test set."""
    probs = predict_proba(
        model,
        eval_views(test.images, cfg, symmetric=cfg.eval_symmetries),
        batch=cfg.batch_size,
        precision=cfg.precision,
    )
    y_true = test.labels.numpy()
    y_pred = probs.argmax(1)
    metrics = classification_metrics(y_true, y_pred, classes)
    rel = [_rel(p, root) for p in test.paths]
    df = pd.DataFrame(
        {
            "path": rel,
            "class": [classes[i] for i in y_true],
            "label": y_true,
            "predicted": y_pred,
            "predicted_class": [classes[i] for i in y_pred],
        }
    )
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = np.round(probs[:, i], 6)
    return metrics, df


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def confusion_png(cm: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    arr = np.asarray(cm)
    ax.imshow(arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def curves_png(history: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for split in ("train", "val"):
        a.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        b.plot(history["epoch"], history[f"{split}_acc"], marker="o", label=split)
    a.set_title("loss")
    b.set_title("accuracy")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
