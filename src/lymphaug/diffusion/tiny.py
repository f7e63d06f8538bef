"""A small Stable Diffusion pipeline built offline from configs, with random weights.

The quick profile and the tests must run on a CPU without downloading anything,
yet exercise exactly the code paths of a real Stable Diffusion v1 checkpoint:
the same classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
CLIPTokenizer, DDPMScheduler) with SD v1's noise schedule, only narrower.
The build is a pure function of the seed, so ``generate`` can rebuild the exact
base a LoRA adapter was trained on instead of storing it.
"""

from __future__ import annotations

from lymphaug.diffusion.seeding import seeded

TINY = "tiny"
MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def tiny_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every character is a token.

    No vocabulary file exists offline; a character-level vocabulary covers any
    prompt, and CLIP's own tokenizer class keeps the pipeline's code path real.
    """
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_LENGTH)


TEXT_ENCODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    projection_dim=32,
)


def build_text_encoder(tokenizer, **config):
    """A CLIP text encoder for ``tokenizer`` (random weights; callers seed torch first):
    the tiny one, or the sizes in ``config`` (sd15.py: SD v1.5's), wired to the
    tokenizer's special tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    sizes = {"vocab_size": len(vocab), **(config or TEXT_ENCODER)}
    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    return CLIPTextModel(CLIPTextConfig(**sizes, **ids))


def text_encoder_and_tokenizer(seed: int):
    """The tiny pipeline's frozen text side, identical for the same ``seed``.

    Random weights are enough for conditioning: the class prompts only need distinct
    embeddings, which the UNet's cross-attention learns to tell apart.
    """
    tokenizer = tiny_tokenizer()
    with seeded(seed):
        return build_text_encoder(tokenizer), tokenizer


def sd_scheduler():
    """Stable Diffusion v1's training noise schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
    )


def assemble(*, vae, text_encoder, tokenizer, unet):
    """A StableDiffusionPipeline of these parts with SD v1's schedule (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(seed: int):
    """The tiny StableDiffusionPipeline, identical for the same ``seed`` (random init, fp32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = tiny_tokenizer()
    with seeded(seed):
        text_encoder = build_text_encoder(tokenizer)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=32,
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=2,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    return assemble(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
