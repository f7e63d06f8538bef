"""Silence the libraries' messages that a user of lymphaug cannot act on, and only those.

Why: a quick-profile ``dvc repro`` printed a dozen long warnings from MLflow, diffusers and
torch, each about a call the project makes on purpose; real problems drowned in them. Each
filter below matches one message (by text, category and module, never a whole category)
and says why it does not apply here. Anything else still prints. :func:`quiet_libraries`
runs once, in ``lymphaug.cli.main``, before a stage imports any of these libraries; it
imports none of them (a logging filter attaches to a logger by name).
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, category, module regex of the warning's origin): warnings.filterwarnings
WARNINGS: list[tuple[str, type[Warning], str]] = [
    # MLflow infers a schema for each data-set manifest logged as a run input (train, val,
    # test) and hints that integer columns cannot hold missing values. Our manifests' integer
    # columns (width, height, fold) never have missing values and nobody serves predictions
    # from them: nothing to do.
    (r"Hint: Inferred schema contains integer column", UserWarning, r"mlflow\."),
    # mlflow.data.from_pandas: "source can be interpreted in multiple ways"; it is a local
    # path, which is what MLflow guesses first.
    (
        r"The specified dataset source can be interpreted in multiple ways",
        UserWarning,
        r"mlflow\.",
    ),
    # torch.export.save, when MLflow writes the model (pt2): a weight stored as a view of a
    # larger tensor is saved from its first view. It concerns torch's archive format, not a
    # choice of ours, and nothing a user can change (MLflow moves nothing off the device).
    (r"No complete tensor found in the group", UserWarning, r"torch\.export\."),
]

# (logger name, message regex): records dropped by a logging filter on that logger
LOG_RECORDS: list[tuple[str, str]] = [
    # diffusers warns on every `.to(dtype)` of a model that declares which modules to keep in
    # float32, even when that list is empty ("...kept in float32: []."): there is then nothing
    # to keep. A non-empty list still prints, since then a user can set torch_dtype.
    ("diffusers.models.modeling_utils", r"should be kept in float32: \[\]\."),
]

# Informational loggers turned down to warnings: first-use notices, not problems.
QUIET_LOGGERS = [
    # "Creating initial MLflow database tables..." / "Updating database tables" on a new store
    "mlflow.store.db.utils",
    "alembic.runtime.migration",
]


class _DropMessages(logging.Filter):
    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(p.search(text) for p in self.patterns)


def quiet_libraries() -> None:
    """Install the filters above (idempotent: a second call adds nothing)."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    by_logger: dict[str, list[str]] = {}
    for name, pattern in LOG_RECORDS:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_diffusers() -> None:
    """Turn off diffusers' and transformers' own bars (for the stages that load a pipeline).

    Why: loading a pipeline drew "Loading pipeline components...", "Loading weights" and
    "Writing model shards" bars, sub-second each, between the stage's own bars (which show
    the real work: steps, images). Downloads from the Hugging Face hub keep their bar: they
    take minutes for Stable Diffusion and a user wants to see them. Imports diffusers, so
    only ``finetune`` and ``generate`` call it (from ``lymphaug.cli``).
    """
    import os

    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # this also turns off the hub's bars ...
    if not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        hub_utils.enable_progress_bars()  # ... which stay, unless the user turned them off
