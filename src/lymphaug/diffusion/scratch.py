"""The from-scratch generator (``finetune.base_model: scratch``): Stable Diffusion's classes
built from configs at a configurable width, for sites where no pretrained weights exist.

Two phases, both on the training split: ``lymphaug autoencoder`` trains the AutoencoderKL
(:mod:`.autoencoder`), then ``lymphaug finetune`` trains a fresh UNet2DConditionModel in its
latent space (:mod:`.training`), conditioned through the tiny pipeline's frozen CLIP text
encoder (random weights: the class prompts only need distinct embeddings). The result is
an ordinary StableDiffusionPipeline saved with ``save_pretrained``.
"""

from __future__ import annotations

import math

import torch

from lymphaug.common.config import AutoencoderConfig
from lymphaug.diffusion.seeding import seeded
from lymphaug.diffusion.tiny import assemble, text_encoder_and_tokenizer

UNET_LAYERS_PER_BLOCK = 2
INITIAL_LOGVAR = -6.0  # the autoencoder's posterior starts at std exp(-3) = 0.05


def _groups(channels: int) -> int:
    """GroupNorm groups for a first level of ``channels``: SD's group size (at least 4
    channels), not SD's 32 groups, which at width 32 is one channel per group.

    A group's mean and variance over the image are normalised away. With one channel per
    group nothing of a crop's overall colour survives the last norm before the output, and
    the autoencoder decoded every crop in the data set's mean stain (measured: the
    reconstructions' colour, matched back to the input's, took the classifier probe on them
    from 69% to 85%). With four, colour lives on as differences between a group's channels.
    """
    return max(g for g in range(1, 33) if channels % g == 0 and channels // g >= 4)


def build_autoencoder(cfg: AutoencoderConfig):
    """A fresh AutoencoderKL: ``log2(downsample) + 1`` blocks of width w, 2w, 4w, ..., capped
    at 4w (SD's first stage is 128, 256, 512, 512 with downsample 8).

    Two departures from SD's first stage, both for a budget of a few thousand CPU steps
    (measured on the real images, README "The from-scratch generator"):

    - no self-attention in the mid blocks: over 32 x 32 latents it was a third of each
      step's time, and texture needs no global context;
    - the posterior starts nearly deterministic (log-variance bias INITIAL_LOGVAR): with
      the tiny KL weight a trained posterior is nearly deterministic anyway, and starting
      at unit variance drowns the early latents in sampling noise.
    """
    from diffusers import AutoencoderKL

    blocks = int(math.log2(cfg.downsample)) + 1
    channels = tuple(cfg.width * min(2**i, 4) for i in range(blocks))
    with seeded(cfg.seed):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=channels,
            layers_per_block=1,
            latent_channels=cfg.latent_channels,
            norm_num_groups=_groups(cfg.width),
            sample_size=cfg.resolution,
            mid_block_add_attention=False,
        )
    # quant_conv's output is (mean, log-variance) along the channels
    with torch.no_grad():
        vae.quant_conv.bias[cfg.latent_channels :] = INITIAL_LOGVAR
    return vae


def build_unet(*, width: int, sample_size: int, in_channels: int, cross_attention_dim: int, seed):
    """A fresh UNet2DConditionModel: three levels (w, 2w, 2w), cross-attention on the two
    coarser ones, where it is cheap (the finest level is all convolution)."""
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(width, 2 * width, 2 * width),
            layers_per_block=UNET_LAYERS_PER_BLOCK,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=_groups(width),
        )


def build_scratch_pipeline(vae, *, unet_width: int, resolution: int, seed: int):
    """A pipeline of the trained ``vae``, the frozen text side of ``seed`` and a fresh UNet
    sized for ``resolution`` px images (latents of resolution / the VAE's downsampling)."""
    text_encoder, tokenizer = text_encoder_and_tokenizer(seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(
        width=unet_width,
        sample_size=resolution // factor,
        in_channels=vae.config.latent_channels,
        cross_attention_dim=text_encoder.config.hidden_size,
        seed=seed + 1,
    )
    return assemble(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
