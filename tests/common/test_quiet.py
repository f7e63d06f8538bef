"""quiet_libraries(): drops exactly the library messages listed in common/quiet.py."""

from __future__ import annotations

import logging
import warnings

import pytest

from lymphaug.common.quiet import quiet_libraries

SCHEMA_HINT = "Hint: Inferred schema contains integer column(s). Integer columns in Python ..."
FP32 = "There are modules in {} that should be kept in float32: {}. Casting directly with ..."


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logger = logging.getLogger("diffusers.models.modeling_utils")
        filters = list(logger.filters)
        quiet_libraries()
        quiet_libraries()  # idempotent
        yield
        logger.filters = filters


def warn_from(module: str, message: str, category: type[Warning] = UserWarning) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, category, f"/site-packages/{module}.py", 1, module=module)
    return caught


def test_only_the_listed_warnings_are_dropped(quiet):
    assert warn_from("mlflow.types.utils", SCHEMA_HINT) == []
    # the same text from another library, or another category, still shows
    assert len(warn_from("lymphaug.train", SCHEMA_HINT)) == 1
    assert len(warn_from("mlflow.types.utils", SCHEMA_HINT, FutureWarning)) == 1
    assert len(warn_from("mlflow.types.utils", "Hint: something else")) == 1


def test_diffusers_fp32_notice_only_when_the_list_is_empty(quiet, caplog):
    logger = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(FP32.format("AutoencoderKL", "[]"))
        logger.warning(FP32.format("UNet2DConditionModel", "['conv_in']"))
    assert [r.getMessage() for r in caplog.records] == [
        FP32.format("UNet2DConditionModel", "['conv_in']")
    ]
