"""Diffusion throughput: fine-tune seconds/step and generation images/s (not a test).

CPU (default): the from-scratch generator at the quick profile's and the cpu profile's sizes:
autoencoder and UNet training steps/s through the project's loops (``train_autoencoder``;
``train_unet`` with Min-SNR, EMA, the crop sampler, under accelerate) beside a bare loop of
the same models in the same process. Timed in CPU seconds of this process (one thread), so
a busy shared machine slows both sides alike instead of whichever ran during a spike.

CPU ``--tiny``: the random-weight tiny model through the project's code (``train_unet``
under accelerate, the generate stage's sampling) beside a plain reference in the same
process: a bare diffusers UNet forward/backward/AdamW loop and a bare sampling loop.

Stable Diffusion size (``--sd``; ``--gpu`` is ``--sd --device cuda``): the UNet of a local
diffusers folder (``--model PATH``, e.g. the SD v1.5 weights or the random-weight folder
:mod:`lymphaug.diffusion.sd15` saves), else SD v1.5's UNet built from its config (random
weights, nothing downloaded), at ``--resolution`` (512 px: 64x64 latents), batch 1, on
``--device``: steps/s and peak memory (CUDA: allocated; CPU: the process's peak RSS, which
only grows) for ``full`` (bf16 or fp16 autocast, gradient checkpointing, 8-bit Adam when
bitsandbytes is installed) and ``lora`` (rank 4 on to_q/to_k/to_v/to_out.0, frozen
half-precision base, fp32 adapters, gradient checkpointing); the frozen VAE and text encoder
are not included. ``--images N``: then generation images/s of the whole pipeline with
``--sample-steps`` DPM-Solver++ steps (30) and guidance.

    python benchmarks/bench_diffusion.py [--steps 20] [--threads 1]
    python benchmarks/bench_diffusion.py --tiny [--steps 20] [--threads 1]
    python benchmarks/bench_diffusion.py --gpu [--steps 20] [--dtype bf16] [--model PATH]
    python benchmarks/bench_diffusion.py --sd --device cpu --model PATH --steps 2 \
        --resolution 64 --images 2 --sample-steps 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, steps: int, warmup: int = 2, clock=time.perf_counter) -> float:
    """Seconds per call (median of ``steps`` after ``warmup``) by ``clock``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = clock()
        fn()
        times.append(clock() - t)
    return float(np.median(times))


def bare_unet_step(ref, *, batch_size: int, resolution: int, learning_rate: float):
    """One step of a bare diffusers loop (no accelerate, no sampler) on ``ref``'s UNet and
    VAE: the same shapes and work as the project's step, as a closure."""
    from diffusers import DDPMScheduler

    from lymphaug.diffusion import training

    unet, vae = ref.unet, ref.vae
    vae.requires_grad_(False)
    sched = DDPMScheduler.from_config(ref.scheduler.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=1e-2)
    emb = training.prompt_embeddings(ref, ["a", "b", "c"], "cpu", torch.float32)
    b, r = batch_size, resolution

    def step():
        x = torch.rand(b, 3, r, r) * 2 - 1
        with torch.no_grad():
            lat = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (b,))
        pred = unet(sched.add_noise(lat, noise, t), t, emb[torch.randint(0, 3, (b,))]).sample
        torch.nn.functional.mse_loss(pred, noise).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step


# --- CPU: the quick profile's tiny model -------------------------------------------------


def cpu(steps: int) -> None:
    from lymphaug.common.config import load_params
    from lymphaug.diffusion import training
    from lymphaug.diffusion.sampling import make_scheduler
    from lymphaug.diffusion.tiny import build_tiny_pipeline

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml")
    # the tiny model at its own settings (the quick profile trains the scratch one)
    cfg = params.finetune.model_copy(
        update={
            "base_model": "tiny",
            "resolution": 32,
            "max_steps": 150,
            "use_ema": False,
            "snr_gamma": None,
            "unet_width": None,
        }
    )
    gen = params.generate
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); quick profile: "
        f"resolution {cfg.resolution}, batch {cfg.batch_size}, {cfg.max_steps} steps; "
        f"generate {gen.per_class}/class, {gen.steps} {gen.scheduler} steps, "
        f"batch {gen.batch_size}"
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (312, 417, 3), dtype=np.uint8) for _ in range(24)]
    data = training.TrainData(images, [i % 3 for i in range(24)], ["a", "b", "c"])

    # project: train_unet under accelerate (sampler, VAE encode, noise, loss, clip, AdamW)
    bench_cfg = cfg.model_copy(
        update={"max_steps": steps + 2, "checkpoint_every": 10**6, "validation_every": 10**6}
    )
    pipe = build_tiny_pipeline(cfg.seed)
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        accelerator = training.make_accelerator(bench_cfg)
        training.train_unet(
            pipe,
            bench_cfg,
            data,
            work_dir=Path(tmp),
            accelerator=accelerator,
            resume=False,
            on_step=lambda *_: marks.append(time.perf_counter()),
        )
    project_step = float(np.median(np.diff(marks[1:])))

    # reference: a bare diffusers loop (no accelerate, no sampler): same shapes and work

    ref = build_tiny_pipeline(cfg.seed)
    unet, vae = ref.unet, ref.vae
    emb = training.prompt_embeddings(ref, ["a", "b", "c"], "cpu", torch.float32)
    b, r = cfg.batch_size, cfg.resolution
    ref_step = bare_unet_step(ref, batch_size=b, resolution=r, learning_rate=cfg.learning_rate)

    ref_s = timed(ref_step, steps)
    print(f"\nfine-tune step (tiny, batch {b}, {r} px)")
    print(f"  project train_unet      {project_step:8.3f} s/step")
    print(
        f"  reference bare loop     {ref_s:8.3f} s/step   "
        f"(project/reference {project_step / ref_s:.2f})"
    )
    print(
        f"  -> quick profile fine-tune ~{project_step * cfg.max_steps:.0f} s "
        f"for {cfg.max_steps} steps"
    )

    # generation: the stage's pipeline call vs a bare sampling loop
    pipe.unet.eval()
    pipe.scheduler = make_scheduler(gen.scheduler, pipe.scheduler.config)
    n = gen.batch_size

    def project_gen():
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        with torch.inference_mode():
            pipe(
                ["a"] * n,
                num_inference_steps=gen.steps,
                guidance_scale=gen.guidance_scale,
                generator=gens,
                output_type="np",
                height=r,
                width=r,
            )

    sampler = make_scheduler(gen.scheduler, ref.scheduler.config)
    cond = torch.cat([emb[-1:].expand(n, -1, -1), emb[:1].expand(n, -1, -1)])

    def ref_gen():
        with torch.inference_mode():
            sampler.set_timesteps(gen.steps)
            lat = torch.randn(n, 4, r // 2, r // 2) * sampler.init_noise_sigma
            for t in sampler.timesteps:
                inp = sampler.scale_model_input(torch.cat([lat, lat]), t)
                u, c = unet(inp, t, cond).sample.chunk(2)
                lat = sampler.step(u + gen.guidance_scale * (c - u), t, lat).prev_sample
            vae.decode(lat / vae.config.scaling_factor)

    unet.eval()
    pg, rg = timed(project_gen, max(3, steps // 4), 1), timed(ref_gen, max(3, steps // 4), 1)
    total = len(params.classes) * gen.per_class
    print(f"\ngeneration (tiny, {gen.steps} steps, batch {n}, guidance {gen.guidance_scale})")
    print(f"  project pipeline        {n / pg:8.1f} images/s")
    print(
        f"  reference bare loop     {n / rg:8.1f} images/s   "
        f"(project/reference {rg / pg:.2f} speed)"
    )
    print(f"  -> quick profile generation ~{total * pg / n:.1f} s for {total} images")
    print(f"\npeak RSS {peak_rss_mb():.0f} MB")


# --- CPU: the from-scratch generator (quick and cpu profiles) ---------------------------


def cpu_timed(fn, steps: int, warmup: int = 2) -> float:
    """CPU seconds of this process per call (median of ``steps`` after ``warmup``)."""
    return timed(fn, steps, warmup, clock=time.process_time)


def profile_params(root: Path, name: str):
    """params.yaml with profiles/<name>.yaml merged in (in memory; quick: params.yaml)."""
    import yaml

    from lymphaug.common.config import parse_params
    from lymphaug.profile import deep_merge

    data = yaml.safe_load((root / "params.yaml").read_text())
    if name != "quick":
        deep_merge(data, yaml.safe_load((root / "profiles" / f"{name}.yaml").read_text()))
    return parse_params(data, f"params.yaml + profiles/{name}.yaml")


def scratch(steps: int, name: str) -> None:

    from lymphaug.diffusion import autoencoder as ae
    from lymphaug.diffusion import training
    from lymphaug.diffusion.scratch import build_autoencoder, build_scratch_pipeline

    root = Path(__file__).resolve().parents[1]
    params = profile_params(root, name)
    acfg, cfg = params.autoencoder, params.finetune
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (312, 417, 3), dtype=np.uint8) for _ in range(24)]
    images = [training.rescaled(a, acfg.scale) for a in arrays]
    print(
        f"\n{name} profile: autoencoder {acfg.resolution} px crops, width {acfg.width}, "
        f"downsample {acfg.downsample}, batch {acfg.batch_size}, {acfg.max_steps} steps; "
        f"UNet {cfg.resolution} px, width {cfg.unet_width}, batch {cfg.batch_size}, "
        f"{cfg.max_steps} steps"
    )

    def per_step(marks: list[float]) -> float:
        return float(np.median(np.diff(marks[2:])))

    # autoencoder: the project's loop vs a bare one of the same model
    bench_acfg = acfg.model_copy(update={"max_steps": steps + 3, "checkpoint_every": 10**6})
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        ae.train_autoencoder(
            build_autoencoder(bench_acfg),
            bench_acfg,
            images,
            work_dir=Path(tmp),
            resume=False,
            on_step=lambda *_: marks.append(time.process_time()),
        )
    project_ae = per_step(marks)
    vae = build_autoencoder(acfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=acfg.learning_rate)
    b, r = acfg.batch_size, acfg.resolution

    def bare_ae():
        x = torch.rand(b, 3, r, r) * 2 - 1
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = (recon - x).abs().mean() + acfg.kl_weight * post.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    bare = cpu_timed(bare_ae, steps)
    print(
        f"  autoencoder  project {1 / project_ae:6.2f} steps/s   bare loop {1 / bare:6.2f} "
        f"steps/s   ratio {bare / project_ae:.2f}   -> {acfg.max_steps} steps "
        f"~{project_ae * acfg.max_steps:.0f} CPU s"
    )

    # UNet: train_unet on the scratch pipeline vs a bare loop of the same UNet and VAE
    bench_cfg = cfg.model_copy(
        update={"max_steps": steps + 3, "checkpoint_every": 10**6, "validation_every": 10**6}
    )
    data = training.TrainData(arrays, [i % 3 for i in range(24)], ["a", "b", "c"])
    pipe = build_scratch_pipeline(
        build_autoencoder(acfg), unet_width=cfg.unet_width, resolution=cfg.resolution, seed=0
    )
    marks = []
    with tempfile.TemporaryDirectory() as tmp:
        training.train_unet(
            pipe,
            bench_cfg,
            data,
            work_dir=Path(tmp),
            accelerator=training.make_accelerator(bench_cfg),
            resume=False,
            on_step=lambda *_: marks.append(time.process_time()),
            scale=acfg.scale,
        )
    project_unet = per_step(marks)
    ref = build_scratch_pipeline(
        build_autoencoder(acfg), unet_width=cfg.unet_width, resolution=cfg.resolution, seed=0
    )
    bare_unet = bare_unet_step(
        ref, batch_size=cfg.batch_size, resolution=cfg.resolution, learning_rate=cfg.learning_rate
    )
    bare = cpu_timed(bare_unet, steps)
    print(
        f"  UNet         project {1 / project_unet:6.2f} steps/s   bare loop {1 / bare:6.2f} "
        f"steps/s   ratio {bare / project_unet:.2f}   -> {cfg.max_steps} steps "
        f"~{project_unet * cfg.max_steps:.0f} CPU s"
    )


# --- Stable Diffusion size: a local folder's UNet or SD v1.5's from its config -------------


def sd(args) -> None:
    from diffusers.training_utils import cast_training_params

    from lymphaug.common.quiet import quiet_diffusers

    quiet_diffusers()  # the stages' filters: no "kept in float32: []" per model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    source = args.model or "SD v1.5 UNet from its config (random weights)"
    print(
        f"{name}, torch {torch.__version__}, {source}, {args.resolution} px, batch 1, "
        f"{args.dtype} autocast"
    )
    try:
        import bitsandbytes as bnb

        adam8 = bnb.optim.AdamW8bit if cuda else None
    except ImportError:
        adam8 = None

    def load_unet():
        if args.model:
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
        from lymphaug.diffusion.sd15 import build_unet

        return build_unet(0)

    def memory() -> str:
        if cuda:
            return f"peak {torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB"
        return f"peak RSS {peak_rss_mb() / 1024:6.2f} GiB"

    def run(label: str, method: str, *, checkpointing: bool, eight_bit: bool) -> None:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        unet = load_unet()
        latent = args.resolution // vae_factor(args.model)
        if method == "lora":
            from peft import LoraConfig

            from lymphaug.diffusion.training import LORA_TARGETS

            unet.requires_grad_(False)
            unet.to(dev, dtype=dtype)
            lora = LoraConfig(
                r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS
            )
            unet.add_adapter(lora)
            cast_training_params(unet, dtype=torch.float32)
        else:
            unet.to(dev)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt_cls = adam8 if (eight_bit and adam8) else torch.optim.AdamW
        opt = opt_cls(params, lr=1e-5)
        scaler = torch.amp.GradScaler(dev.type, enabled=cuda and dtype == torch.float16)
        lat = torch.randn(1, unet.config.in_channels, latent, latent, device=dev)
        emb = torch.randn(1, 77, unet.config.cross_attention_dim, device=dev)

        def step():
            t = torch.randint(0, 1000, (1,), device=dev)
            noise = torch.randn_like(lat)
            with torch.autocast(dev.type, dtype=dtype):
                pred = unet(lat + noise, t, emb.to(dtype)).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()

        s = timed(step, args.steps, warmup=1 if not cuda else 2)
        n = sum(p.numel() for p in params)
        print(
            f"  {label:<44} {1 / s:6.2f} steps/s ({s:6.2f} s)  {memory()}  "
            f"trainable {n / 1e6:7.2f} M  ({opt_cls.__module__.split('.')[0]})"
        )

    methods = args.methods.split(",")
    if "full" in methods:
        run(
            "full, grad ckpt, 8-bit Adam" + ("" if adam8 else " (n/a: AdamW)"),
            "full",
            checkpointing=True,
            eight_bit=True,
        )
        run("full, grad ckpt, AdamW", "full", checkpointing=True, eight_bit=False)
        run("full, no ckpt, AdamW (reference)", "full", checkpointing=False, eight_bit=False)
    if "lora" in methods:
        run("lora r4, grad ckpt", "lora", checkpointing=True, eight_bit=False)
        run("lora r4, no ckpt (reference)", "lora", checkpointing=False, eight_bit=False)
    print("targets (GPU): lora < 10 GiB, full < 24 GiB with checkpointing + 8-bit Adam")
    if args.images:
        sample(args, dev, dtype if cuda else torch.float32)


def vae_factor(model: str | None) -> int:
    """Pixels per latent: from the folder's VAE config (SD v1.5: 8)."""
    if not model:
        return 8
    import json

    config = json.loads((Path(model) / "vae" / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)


def sample(args, dev: torch.device, dtype: torch.dtype) -> None:
    """Images/s of the whole pipeline (text encoder, UNet with guidance, VAE decode)."""
    from lymphaug.diffusion.sampling import make_scheduler

    if args.model:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            args.model, safety_checker=None, requires_safety_checker=False
        )
    else:
        from lymphaug.diffusion.sd15 import build_sd15_pipeline

        pipe = build_sd15_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev, dtype)
    pipe.scheduler = make_scheduler("dpmsolver++", pipe.scheduler.config)
    n, r = args.images, args.resolution

    def generate():
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        with torch.inference_mode():
            pipe(
                ["a"] * n,
                num_inference_steps=args.sample_steps,
                guidance_scale=7.5,
                generator=gens,
                output_type="np",
                height=r,
                width=r,
            )
        if dev.type == "cuda":
            torch.cuda.synchronize()

    s = timed(generate, 2, warmup=1)
    print(
        f"  generation, {n} images at {r} px, {args.sample_steps} DPM-Solver++ steps, "
        f"guidance 7.5: {n / s:6.2f} images/s ({s / n:6.2f} s per image)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd", action="store_true", help="Stable Diffusion size (see --model)")
    ap.add_argument("--gpu", action="store_true", help="--sd --device cuda")
    ap.add_argument("--model", metavar="PATH", help="--sd: a local diffusers folder's UNet")
    ap.add_argument("--device", choices=["cuda", "cpu"], help="--sd: default cuda if present")
    ap.add_argument("--resolution", type=int, default=512, help="--sd: px (%(default)s)")
    ap.add_argument("--methods", default="full,lora", help="--sd: %(default)s")
    ap.add_argument("--images", type=int, default=0, help="--sd: then generate N images")
    ap.add_argument("--sample-steps", type=int, default=30, help="--sd --images: %(default)s")
    ap.add_argument("--tiny", action="store_true", help="the random-weight tiny model (CPU)")
    ap.add_argument("--profiles", default="quick,cpu", help="scratch mode: %(default)s")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument(
        "--threads", type=int, default=1, help="CPU threads (the stage uses 1 for tiny)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu or args.sd:
        args.device = "cuda" if args.gpu else args.device
        sd(args)
        return
    if args.tiny:
        cpu(args.steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ratio: bare/project")
    for name in args.profiles.split(","):
        scratch(args.steps, name)


if __name__ == "__main__":
    main()
