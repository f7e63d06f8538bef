"""Seeds for every random draw of fine-tuning and generation.

Each draw depends only on the configured seed and on what it is for (a training step, a
micro-batch, a process; a class and an image index), never on the order in which work
happens. That is what lets a resumed run need no saved RNG state and what keeps a
synthetic image the same whatever the batch size.

Library code that draws from torch's *global* generator (random weight initialisation:
the tiny and from-scratch models, peft's LoRA adapters) runs inside :func:`seeded`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

# The pseudo-step of the LoRA adapter's initial weights (training steps count from 0 and
# validation uses 10**6): a stream of its own, so the init never shares draws with a step
LORA_INIT_STEP = 10**6 + 1


def image_seed(seed: int, class_index: int, index: int) -> int:
    """The seed of one synthetic image: independent of batch size and of the other images."""
    return derived_seed(seed, class_index, index)


def derived_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed that depends only on ``seed`` and ``parts``."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator that depends only on ``seed`` and ``parts`` (step, micro, process)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's global generators seeded with ``seed`` inside the block, restored after.

    For random weights built by library code that draws from the global generator: the
    weights are a function of ``seed`` and the caller's random streams (CPU and every CUDA
    device) continue as if the block had not run.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
