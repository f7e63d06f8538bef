"""Seeds for every random draw of fine-tuning and generation.

Each draw depends only on the configured seed and on what it is for (a training step, a
micro-batch, a process; a class and an image index), never on the order in which work
happens. That is what lets a resumed run need no saved RNG state and what keeps a
synthetic image the same whatever the batch size.
"""

from __future__ import annotations

import numpy as np
import torch


def image_seed(seed: int, class_index: int, index: int) -> int:
    """The seed of one synthetic image: independent of batch size and of the other images."""
    state = np.random.SeedSequence([seed, class_index, index]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def step_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU generator that depends only on ``seed`` and ``parts`` (step, micro, process)."""
    state = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))
