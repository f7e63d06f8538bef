"""Stable Diffusion v1.5's exact architecture with random weights, built offline.

The stand-in for the real checkpoint where its weights cannot be downloaded: the benchmarks
measure the SD-size costs (memory, seconds per step, images/s) and the slow test runs the
stages on it. Every component has the published configuration (UNet 859,520,964 parameters,
VAE 83,653,863, CLIP ViT-L/14 text encoder 123,060,480); only the tokenizer is the tiny
pipeline's character-level one (CLIP's vocabulary files are a download too).
"""

from __future__ import annotations

from lymphaug.diffusion.seeding import seeded
from lymphaug.diffusion.tiny import MAX_LENGTH, assemble, build_text_encoder, tiny_tokenizer

UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=768,
)


def build_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        return UNet2DConditionModel(**UNET)


def build_sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD v1.5's components (random weights, fp32, ~4.3 GB)."""
    from diffusers import AutoencoderKL

    tokenizer = tiny_tokenizer()
    with seeded(seed):
        encoder = build_text_encoder(tokenizer, **TEXT_ENCODER)
        vae = AutoencoderKL(**VAE)
    return assemble(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=build_unet(seed + 1))
