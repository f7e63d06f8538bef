"""Shared Stable Diffusion code for the ``finetune`` and ``generate`` stages.

- :mod:`.tiny`: a small pipeline built offline from configs, random weights (tests, baseline);
- :mod:`.scratch`, :mod:`.autoencoder`: the from-scratch generator and its first stage;
- :mod:`.loading`: base models (tiny, hub id, local folder) and the fine-tuned model's format;
- :mod:`.training`: the UNet fine-tuning loop (full or LoRA) under accelerate;
- :mod:`.sampling`: schedulers, per-image seeds, batched sampling and picture grids.

Importing this package is cheap; the submodules import torch and diffusers.
"""
