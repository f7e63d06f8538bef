"""Training throughput: lymphaug's tensor pipeline vs the reference study's per-item PIL loader.

Same model (AlexNet, 227 px, batch 30, Adam), same images (../shared/data/lymphoma),
same process, so the ratio survives a busy machine:

- reference: ``ImageFolder``-style Dataset decoding each PNG with PIL on every access,
  ``transforms.Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize])``
  per item, ``DataLoader(batch_size=30, shuffle=True, num_workers=W)``, the whole model
  in train mode with ``requires_grad=False`` on the frozen part (the study's recipe);
- lymphaug: images decoded once to uint8 tensors, batched tensor augmentation,
  channels-last, frozen body under ``no_grad``, fused Adam (``lymphaug.classifier``).

    python benchmarks/bench_train.py [--data ../shared/data/lymphoma] [--images 120] [--steps 4]

Prints images/s, seconds and peak RSS per pipeline and mode (frozen, full fine-tune).
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

from lymphaug.classifier.data import ImageSet, decode, normalize, random_crops
from lymphaug.classifier.loop import _adam, autocast
from lymphaug.classifier.model import build_classifier
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
    opt = _adam(list(model.head.parameters() if frozen else model.parameters()), cfg)
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
    args = ap.parse_args()
    items = files(Path(args.data), args.images)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(items)} images, "
        f"AlexNet 227 px, batch 30, {args.steps} timed steps (after 1 warm-up step)"
    )
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


if __name__ == "__main__":
    main()
