"""Test-set evaluation of the best epoch: metrics, per-image predictions, figures.

The per-image predictions CSV is what the comparison stage pairs across conditions
(same test images, same order), so it carries the path, the true class and the
per-class probabilities, not only the argmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lymphaug.classifier.data import ImageSet, eval_tensor, normalize
from lymphaug.classifier.model import Classifier
from lymphaug.common.metrics import confusion_matrix, macro_f1, per_class_scores

PREDICTION_COLUMNS = ["path", "class", "label", "predicted", "predicted_class"]  # + prob_<class>


def predict_proba(
    model: Classifier, x_u8: torch.Tensor, batch: int = 64, precision: str = "fp32"
) -> np.ndarray:
    from lymphaug.classifier.loop import autocast, device_of

    model.eval()
    dev = device_of(model)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x_u8), batch):
            with autocast(precision, dev):
                logits = model(normalize(x_u8[i : i + batch]).to(dev)).float()
            out.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(out).double().numpy()


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
    input_size: int,
    root: Path,
    precision: str = "fp32",
) -> tuple[dict, pd.DataFrame]:
    """(metrics dict, predictions DataFrame) of ``model`` on the test set."""
    probs = predict_proba(model, eval_tensor(test.images, input_size), precision=precision)
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
