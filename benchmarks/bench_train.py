"""Training throughput: lymphaug's tensor pipelines vs per-item PIL loaders, and the limit.

Same process, same images (../shared/data/lymphoma), so the ratios survive a busy machine.

1. The study's recipe (AlexNet, 227 px, batch 30, Adam), frozen and full:
   - reference: an ``ImageFolder``-style Dataset decoding each PNG with PIL on every access,
     ``Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize])`` per item,
     ``DataLoader(batch_size=30, shuffle=True, num_workers=W)`` (the study's loader);
   - lymphaug: images decoded once to uint8 tensors, batched tensor augmentation,
     channels-last, frozen body under ``no_grad``, fused Adam.
2. The histology recipe (``lymphaug_cnn``, 64 px patches of the half-resolution images,
   dihedral + stain + colour jitter, AdamW with warm-up and cosine decay, batch 32):
   - reference: per item, PIL decode, half-size resize, random 64 px crop, random
     rotation/flip, ``ColorJitter``, ``ToTensor``, ``Normalize`` in a DataLoader (no stain
     jitter: torchvision has none, so the reference does less work than lymphaug);
   - lymphaug: one epoch of the real training loop (``classifier.loop._train_epoch``);
   - the limit: the model alone, forward + backward + AdamW step on one batch of
     normalised patches already in memory, no augmentation at all.

    python benchmarks/bench_train.py [--data ../shared/data/lymphoma] [--images 120] [--steps 8]

Prints images/s, seconds and peak RSS per pipeline, and the ratios.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as nnf
import torchvision
from PIL import Image
from torchvision import transforms as T

from lymphaug.classifier.data import ImageSet, decode
from lymphaug.classifier.loop import make_optimizer
from lymphaug.classifier.model import autocast, build_classifier
from lymphaug.classifier.transforms import normalize, random_crops
from lymphaug.common.config import TrainConfig

CLASSES = ["CLL", "FL", "MCL"]


def files(root: Path, n: int) -> list[tuple[Path, int]]:
    per = n // len(CLASSES)
    return [(p, i) for i, c in enumerate(CLASSES) for p in sorted((root / c).glob("*.png"))[:per]]


class PilDataset(torch.utils.data.Dataset):
    """The reference study's loader: decode and transform one PIL image per item."""

    def __init__(self, items):
        self.items = items
        self.tf = T.Compose(
            [
                T.RandomResizedCrop(227, scale=(0.8, 1.0)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as img:
            return self.tf(img.convert("RGB")), label


def reference(items, frozen: bool, steps: int, workers: int) -> tuple[int, float]:
    torch.manual_seed(0)
    model = torchvision.models.alexnet()
    model.classifier[6] = torch.nn.Linear(4096, 3)
    if frozen:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier.6"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    loader = torch.utils.data.DataLoader(
        PilDataset(items), batch_size=30, shuffle=True, num_workers=workers, drop_last=True
    )
    model.train()
    seen, t0 = 0, None
    while True:
        for k, (x, y) in enumerate(loader):
            loss = nnf.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if t0 is None:  # first step is warm-up (workers start, allocator)
                t0 = time.perf_counter()
                continue
            seen += len(y)
            if seen >= steps * 30:
                return seen, time.perf_counter() - t0
            del k


def ours(items, frozen: bool, steps: int, precision: str = "fp32") -> tuple[int, float]:
    cfg = TrainConfig(
        freeze_backbone=frozen, input_size=227, batch_size=30, vflip=False, precision=precision
    )
    data = ImageSet(decode([p for p, _ in items]), torch.tensor([y for _, y in items]), [])
    torch.manual_seed(0)
    model = build_classifier("alexnet", 3, "none").to(memory_format=torch.channels_last)
    if frozen:
        model.freeze_body()
    opt = make_optimizer(list((model.head if frozen else model).named_parameters()), cfg)
    gen = torch.Generator().manual_seed(0)
    model.train()
    seen, t0 = 0, None
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for s in range(0, len(order) - 29, 30):
            idx = order[s : s + 30]
            x = normalize(random_crops([data.images[i] for i in idx], 227, gen, vflip=False))
            if frozen:
                with torch.no_grad(), autocast(precision):
                    f = model.body(x).float()
                logits = model.head(f)
            else:
                with autocast(precision):
                    logits = model(x).float()
            loss = nnf.cross_entropy(logits, data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if t0 is None:
                t0 = time.perf_counter()
                continue
            seen += len(idx)
            if seen >= steps * 30:
                return seen, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/lymphoma")
    )
    ap.add_argument("--images", type=int, default=120, help="images used (decoded once by ours)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of batch 30 per run")
    ap.add_argument("--workers", type=int, default=2, help="reference DataLoader num_workers")
    ap.add_argument("--only", choices=["study", "patches"], help="one recipe (default: both)")
    args = ap.parse_args()
    items = files(Path(args.data), args.images)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(items)} images, "
        f"AlexNet 227 px, batch 30, {args.steps} timed steps (after 1 warm-up step)"
    )
    if args.only != "patches":
        study_recipe(items, args)
    if args.only != "study":
        patch_recipe(items, args)


def study_recipe(items, args) -> None:
    print(f"{'mode':<8} {'pipeline':<26} {'img/s':>7} {'s':>6} {'peak RSS MiB':>13}")
    for frozen in (True, False):
        mode = "frozen" if frozen else "full"
        results = {}
        t_decode = time.perf_counter()
        for name, fn in (
            (
                f"reference (PIL, {args.workers} workers)",
                lambda f=frozen: reference(items, f, args.steps, args.workers),
            ),
            ("lymphaug (tensors, fp32)", lambda f=frozen: ours(items, f, args.steps)),
            ("lymphaug (tensors, bf16)", lambda f=frozen: ours(items, f, args.steps, "bf16")),
        ):
            t_decode = time.perf_counter()
            n, secs = fn()
            total = time.perf_counter() - t_decode
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            results[name] = n / secs
            print(
                f"{mode:<8} {name:<26} {n / secs:7.1f} {secs:6.1f} {rss:13.0f}"
                f"   (incl. set-up {total:.1f} s)"
            )
        ref, fp32, bf16 = results.values()
        print(f"{mode:<8} speed-up vs reference: fp32 {fp32 / ref:.2f}x, bf16 {bf16 / ref:.2f}x")


# --- the histology recipe ---------------------------------------------------


def patch_recipe_config() -> TrainConfig:
    """The real-image recipe exactly as profiles/cpu.yaml sets it (seeds and device aside)."""
    import yaml

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/cpu.yaml").read_text())
    train = {k: v for k, v in preset["train"].items() if k not in ("seeds", "device")}
    return TrainConfig(**train)


class PilPatchDataset(torch.utils.data.Dataset):
    """Per item: decode, half-size, random patch, rotation/flip, colour jitter, normalise."""

    def __init__(self, items, patches_per_image: int):
        self.items, self.repeat = items, patches_per_image
        self.tf = T.Compose(
            [
                T.RandomCrop(64),
                T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.1, 0.1, 0.1),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self):
        return len(self.items) * self.repeat

    def __getitem__(self, i):
        path, label = self.items[i % len(self.items)]
        with Image.open(path) as img:
            img = img.convert("RGB")
            img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)
            return self.tf(img), label


def _patch_model(cfg: TrainConfig):
    torch.manual_seed(0)
    model = build_classifier(cfg.arch, 3, "none", width=cfg.width)
    model.to(memory_format=torch.channels_last).train()
    return model, make_optimizer(list(model.named_parameters()), cfg)


def patch_reference(items, cfg: TrainConfig, workers: int) -> tuple[int, float]:
    model, opt = _patch_model(cfg)
    loader = torch.utils.data.DataLoader(
        PilPatchDataset(items, cfg.patches_per_image),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    seen, t0 = 0, None
    for x, y in loader:
        with autocast(cfg.precision):  # the recipe's precision, as in the training loop
            loss = nnf.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t0 is None:  # first step is warm-up (workers start, allocator)
            t0 = time.perf_counter()
            continue
        seen += len(y)
    return seen, time.perf_counter() - t0


def patch_ours(items, cfg: TrainConfig) -> tuple[int, float]:
    """One epoch of the project's training loop (decoding done once, before the clock)."""
    from lymphaug.classifier.loop import _train_epoch, lr_factor, steps_per_epoch

    data = ImageSet(
        decode([p for p, _ in items], scale=cfg.scale), torch.tensor([y for _, y in items]), []
    )
    model, opt = _patch_model(cfg)
    total = cfg.epochs * steps_per_epoch(data, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: lr_factor(
            s, total_steps=total, warmup_fraction=cfg.warmup_fraction, schedule=cfg.lr_schedule
        ),
    )
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    _train_epoch(model, opt, data, scheduler=sched, cfg=cfg, generator=gen, epoch=1, frozen=False)
    return len(data) * cfg.patches_per_image, time.perf_counter() - t0


def patch_model_alone(cfg: TrainConfig, steps: int) -> tuple[int, float]:
    """The limit: forward, backward, step on a batch already normalised in memory."""
    model, opt = _patch_model(cfg)
    x = torch.randn(cfg.batch_size, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.arange(cfg.batch_size) % 3
    seen, t0 = 0, None
    for _ in range(steps + 1):
        with autocast(cfg.precision):
            loss = nnf.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t0 is None:
            t0 = time.perf_counter()
            continue
        seen += len(y)
    return seen, time.perf_counter() - t0


def patch_recipe(items, args) -> None:
    cfg = patch_recipe_config()
    steps = len(items) * cfg.patches_per_image // cfg.batch_size
    print(
        f"\nhistology recipe: {cfg.arch} width {cfg.width} ({cfg.precision}), {cfg.patch_size} px "
        f"patches of the "
        f"x{cfg.scale:g} images, {cfg.patches_per_image} per image, batch {cfg.batch_size}, "
        f"{len(items)} images = {steps} steps per epoch"
    )
    print(f"{'pipeline':<40} {'img/s':>7} {'s':>6} {'peak RSS MiB':>13}")
    results = {}
    for name, fn in (
        (
            f"reference (PIL per item, {args.workers} workers)",
            lambda: patch_reference(items, cfg, args.workers),
        ),
        ("lymphaug (training loop, one epoch)", lambda: patch_ours(items, cfg)),
        ("model alone (tensors in memory)", lambda: patch_model_alone(cfg, steps)),
    ):
        n, secs = fn()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results[name] = n / secs
        print(f"{name:<40} {n / secs:7.1f} {secs:6.1f} {rss:13.0f}")
    ref, ours_rate, limit = results.values()
    print(
        f"lymphaug vs reference: {ours_rate / ref:.2f}x; "
        f"lymphaug vs model alone: {ours_rate / limit:.2f} of the limit"
    )


if __name__ == "__main__":
    main()
