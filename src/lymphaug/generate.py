"""``lymphaug generate --fold F``: synthetic images per class from fold F's fine-tuned model.

txt2img samples from the class prompt; img2img (SDEdit, Trabucco et al. 2023) starts from
a noised *training* image of the class with ``strength`` in (0, 1]. Every image has its own
seed (a function of generate.seed, class and index), so the pictures do not depend on the
batch size, and finished images are kept in ``work/generate/fold_<F>/<hash>`` so an
interrupted run resumes without redoing or duplicating them. A model that learned from
another fold or another split file is refused (its description records both). At the end
everything is moved atomically into ``data/synthetic/fold_<F>/<class>/*.png`` with
``manifest.csv`` (manifest.SYNTHETIC_COLUMNS, stamped with the fold and split digest), and a
real-vs-synthetic contact sheet is drawn. Images are sampled at the data set's aspect ratio
and resized to its image size, never stretched (:func:`sampling_canvas`).

A finished image is reused only if it decodes and its sha256 is the one recorded in
``finished.jsonl`` when it was written: a truncated or replaced file is made again, never
published. One generate per fold runs at a time (a lock in ``work/generate/fold_<F>``);
holding it, a run
removes temporary files of killed runs and the work folders of other params.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from lymphaug.common.config import GenerateConfig, Params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.files import (
    atomic_path,
    prune,
    remove,
    remove_stale_temps,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
)
from lymphaug.common.images import png_bytes, read_rgb, to_uint8
from lymphaug.common.locks import exclusive, lock_path
from lymphaug.common.manifest import (
    PROVENANCE_COLUMNS,
    RAW_COLUMNS,
    SPLIT_COLUMNS,
    SYNTHETIC_COLUMNS,
    SYNTHETIC_ROW_COLUMNS,
    assert_same_split,
    assert_train_only,
    read_table,
    with_provenance,
    write_table,
)
from lymphaug.common.paths import Layout
from lymphaug.common.progress import progress

SHEET = "synthetic_contact_sheet.png"
FINISHED = "finished.jsonl"  # beside the images: one {"path", "sha256"} line per written image


@dataclass(frozen=True)
class Job:
    """One synthetic image to make."""

    cls: str
    class_index: int
    index: int
    seed: int
    prompt: str
    source: str  # data/raw-relative training image (img2img), else ""

    @property
    def rel(self) -> str:
        return f"{self.cls}/{self.cls}_{self.index:04d}.png"


def dataset_size(raw_manifest: pd.DataFrame) -> tuple[int, int]:
    """The data set's (width, height): the most common size in data/raw/manifest.csv."""
    if raw_manifest.empty:
        raise DataError("data/raw/manifest.csv: no images, so no target size")
    sizes = raw_manifest.groupby(["width", "height"]).size().reset_index(name="n")
    best = sizes.sort_values(["n", "width", "height"], ascending=[False, True, True]).iloc[0]
    return int(best["width"]), int(best["height"])


def output_size(info, raw_manifest: pd.DataFrame) -> tuple[int, int]:
    """(width, height) of the published images.

    A from-scratch model learnt square crops of images rescaled by its ``scale``: its samples
    are upsampled by 1 / scale, so their tissue has the real images' pixel scale (nuclei as
    many pixels wide) and the classifier rescales both alike. Stretching a square sample to
    the data set's aspect would distort every nucleus. Other models: the data set's size.
    """
    scale = info.extra.get("scale")
    if scale:
        side = round(info.resolution / scale)
        return side, side
    return dataset_size(raw_manifest)


def sampling_canvas(info, size: tuple[int, int], multiple: int):
    """Where the images are sampled (a :class:`~lymphaug.diffusion.sampling.Canvas`).

    A from-scratch model: its square training crops, at its pixel scale (published at
    crop / scale, see :func:`output_size`). Any other model: the data set's aspect ratio at
    the training crops' scale, in ``multiple``s of pixels (the UNet's), the centre cropped to
    the exact ratio, so the published images are resized, never stretched.
    """
    from lymphaug.diffusion.sampling import Canvas, aspect_canvas

    scale = info.extra.get("scale")
    if scale:
        return Canvas(sample=(info.resolution, info.resolution), source_scale=scale)
    return aspect_canvas(*size, resolution=info.resolution, multiple=multiple)


def plan(
    cfg: GenerateConfig, classes: list[str], prompts: dict[str, str], sources: dict[str, list[str]]
) -> list[Job]:
    """Every image to make, in order; img2img cycles through the class's training images."""
    from lymphaug.diffusion.seeding import image_seed

    missing = [c for c in classes if not prompts.get(c, "").strip()]
    if missing:
        raise DataError(
            f"the fine-tuned model has no prompt for class(es) {missing}; rerun `lymphaug finetune`"
        )
    if cfg.mode == "img2img" and int(cfg.steps * cfg.strength) < 1:
        raise ConfigError(
            f"generate.strength={cfg.strength} x generate.steps={cfg.steps} leaves no denoising "
            "step; raise strength or steps"
        )
    jobs = []
    for class_index, cls in enumerate(classes):
        pool = sources.get(cls, [])
        if cfg.mode == "img2img" and not pool:
            raise DataError(f"img2img: class {cls} has no training image to start from")
        for index in range(cfg.per_class):
            jobs.append(
                Job(
                    cls=cls,
                    class_index=class_index,
                    index=index,
                    seed=image_seed(cfg.seed, class_index, index),
                    prompt=prompts[cls],
                    source=pool[index % len(pool)] if cfg.mode == "img2img" else "",
                )
            )
    return jobs


def generation_identity(cfg: GenerateConfig, fingerprint: str, size, jobs: list[Job]) -> list:
    """Identify a generation by what determines its pixels (not batch size or sheet layout)."""
    settings = cfg.model_dump(exclude={"batch_size", "contact_sheet_per_class"})
    return [settings, fingerprint, list(size), [asdict(j) for j in jobs]]


def intact_images(out_dir: Path, jobs: list[Job]) -> tuple[set[str], list[str]]:
    """The jobs whose image can be reused, and the files that failed the check (removed).

    An image counts only if its sha256 is the one recorded when it was written and it
    decodes: existing is not enough (a kill or a full disk can leave a truncated file).
    """
    recorded: dict[str, str] = {}
    record = out_dir.parent / FINISHED
    if record.is_file():
        for line in record.read_text().splitlines():
            try:  # a line cut short by a kill is no record
                entry = json.loads(line)
                recorded[entry["path"]] = entry["sha256"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    intact, bad = set(), []
    for job in jobs:
        path = out_dir / job.rel
        if not path.is_file():
            continue
        try:
            ok = recorded.get(job.rel) == sha256_file(path)
            if ok:
                read_rgb(path)  # the hash was taken of the bytes written: they must decode too
        except (DataError, OSError):
            ok = False
        if ok:
            intact.add(job.rel)
        else:
            bad.append(job.rel)
            remove(path)
    return intact, bad


def _record(out_dir: Path, rel: str, data: bytes) -> None:
    """Append the written image's hash (after the image is in place: a kill between the two
    leaves an unrecorded image, which is made again)."""
    with open(out_dir.parent / FINISHED, "a") as f:
        f.write(json.dumps({"path": rel, "sha256": sha256_bytes(data)}) + "\n")


def generate_images(
    pipe,
    jobs: list[Job],
    cfg: GenerateConfig,
    *,
    out_dir: Path,
    size: tuple[int, int],
    canvas,
    raw: Path,
    on_image: Callable[[Job], None] | None = None,
) -> int:
    """Write every job's PNG into ``out_dir`` (skipping finished ones); returns how many were made.

    Each file is written atomically right after its batch, so an interruption loses at
    most the batch in flight. Images are sampled on ``canvas`` (see :func:`sampling_canvas`)
    and saved at ``size`` (width, height); img2img reads its sources from ``raw``.
    """
    import torch

    from lymphaug.diffusion.sampling import make_scheduler

    intact, bad = intact_images(out_dir, jobs)
    if bad:
        print(
            f"generate: {len(bad)} finished image(s) in {out_dir} failed verification "
            f"(truncated or changed; e.g. {bad[0]}): making them again",
            file=sys.stderr,
        )
    todo = [j for j in jobs if j.rel not in intact]
    if not todo:
        return 0
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    if cfg.mode == "img2img":
        from diffusers import StableDiffusionImg2ImgPipeline

        runner = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
        runner.set_progress_bar_config(disable=True)
    else:
        runner = pipe
    made = 0
    bar = progress(total=len(jobs), initial=len(jobs) - len(todo), desc="generate", unit="img")
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    for batch in batches:
        # one prompt per call keeps the conditioning batch uniform; classes are contiguous
        for cls in dict.fromkeys(j.cls for j in batch):
            class_jobs = [j for j in batch if j.cls == cls]
            # one generator per image, seeded by the image: the batch size does not matter
            generators = [torch.Generator("cpu").manual_seed(j.seed) for j in class_jobs]
            call = dict(
                prompt=[j.prompt for j in class_jobs],
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                generator=generators,
                output_type="np",
            )
            if cfg.mode == "img2img":
                # the training image rescaled to cover the canvas and cut, never squashed
                call["image"] = [canvas.source(read_rgb(raw / j.source)) for j in class_jobs]
                call["strength"] = cfg.strength
            else:
                call.update(width=canvas.sample[0], height=canvas.sample[1])
            with torch.inference_mode():
                images = to_uint8(runner(**call).images * 255.0)
            for job, img in zip(class_jobs, images, strict=True):
                data = png_bytes(canvas.finish(img, *size))
                write_bytes_atomic(out_dir / job.rel, data)
                _record(out_dir, job.rel, data)
                made += 1
                bar.update(1)
                if on_image:
                    on_image(job)
    bar.close()
    return made


def manifest_frame(jobs: list[Job], cfg: GenerateConfig) -> pd.DataFrame:
    """One row per image with the settings that made it."""
    rows = [
        {
            "path": job.rel,
            "class": job.cls,
            "prompt": job.prompt,
            "seed": job.seed,
            "scheduler": cfg.scheduler,
            "steps": cfg.steps,
            "guidance": cfg.guidance_scale,
            "mode": cfg.mode,
            "strength": cfg.strength if cfg.mode == "img2img" else "",
            "source": job.source,
        }
        for job in jobs
    ]
    return pd.DataFrame(rows, columns=SYNTHETIC_ROW_COLUMNS)


def publish(
    work_images: Path, jobs: list[Job], cfg: GenerateConfig, target: Path, *, provenance: dict
) -> None:
    """Move the finished images and the manifest into ``target`` in one atomic rename;
    ``provenance``: the fold and split digest the model learned from (manifest.with_provenance).
    """
    with atomic_path(target) as tmp:
        for job in jobs:
            (tmp / job.rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(work_images / job.rel, tmp / job.rel)
        rows = with_provenance(manifest_frame(jobs, cfg), **provenance)
        write_table(rows, tmp / "manifest.csv", SYNTHETIC_COLUMNS)


def contact_sheet_image(
    layout: Layout, train: pd.DataFrame, classes: list[str], *, per_class: int, crop=None
):
    """The first ``per_class`` real training and synthetic images of each class, side by side,
    to judge at a glance whether the synthetic ones look like the class.

    ``crop`` (width, height): show the centre of each real image at that size, so real and
    synthetic tiles appear at the same pixel scale (from-scratch models make crop-sized tiles).
    """
    from lymphaug.diffusion.sampling import centre_crop, real_vs_synthetic_sheet

    manifest = read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)
    real, synthetic = {}, {}
    for cls in classes:
        real_paths = train[train["class"] == cls]["path"][:per_class]
        synthetic_paths = manifest[manifest["class"] == cls]["path"][:per_class]
        real[cls] = [read_rgb(layout.raw / p) for p in real_paths]
        if crop is not None:
            real[cls] = [centre_crop(image, *crop) for image in real[cls]]
        synthetic[cls] = [read_rgb(layout.synthetic / p) for p in synthetic_paths]
    return real_vs_synthetic_sheet(real, synthetic)


def clean_stale(layout: Layout, work: Path) -> list[Path]:
    """What killed or other-params runs left (call it holding the lock); returns what went."""
    half_written = list((work / "images").rglob(".*.tmp"))
    for path in half_written:
        remove(path)
    others = prune(work.parent, {work, lock_path(work.parent)})
    return [*remove_stale_temps(layout.synthetic), *half_written, *others]


def generate(
    params: Params,
    layout: Layout,
    *,
    resume: bool = True,
    track: bool = True,
    on_image: Callable[[Job], None] | None = None,
    device: str | None = None,
) -> dict:
    """The whole stage; returns a summary (images made, skipped, seconds, work folder, the
    sampling canvas).

    The lock is taken first (a second generate refuses before touching MLflow), then the
    MLflow run is opened, so an unreachable tracking server fails before any image is
    generated rather than after.
    """
    with exclusive(
        lock_path(layout.fold_work("generate")), f"lymphaug generate --fold {layout.fold}"
    ):
        if not track:
            return _generate(
                params, layout, resume=resume, on_image=on_image, device=device, run_id=None
            )
        from lymphaug.diffusion.track import child_run

        with child_run(params, layout.root, "generate", fold=layout.fold) as run_id:
            return _generate(
                params, layout, resume=resume, on_image=on_image, device=device, run_id=run_id
            )


def _generate(
    params: Params,
    layout: Layout,
    *,
    resume: bool,
    on_image: Callable[[Job], None] | None,
    device: str | None,
    run_id: str | None,
) -> dict:
    """The stage's work; logs to the MLflow run ``run_id`` when there is one."""
    import torch

    from lymphaug.diffusion.loading import INFO_FILE, load_finetuned
    from lymphaug.diffusion.sampling import pixel_multiple

    cfg = params.generate
    pipe, info = load_finetuned(layout.diffusion_model, layout.root)
    size = output_size(info, read_table(layout.raw_manifest, RAW_COLUMNS))
    canvas = sampling_canvas(info, size, pixel_multiple(pipe))
    split = read_table(layout.split_csv, SPLIT_COLUMNS)
    train = split[split["split"] == "train"].sort_values("path", kind="stable")
    assert_train_only(train["path"], split, "generate")
    split_sha256 = sha256_file(layout.split_csv)
    learned = pd.DataFrame([info.extra]).reindex(columns=PROVENANCE_COLUMNS)
    assert_same_split(
        learned,
        manifest_path=layout.diffusion_model / INFO_FILE,
        fold=layout.fold,
        split_path=layout.split_csv,
        split_sha256=split_sha256,
    )
    sources = {c: list(train[train["class"] == c]["path"]) for c in params.classes}
    jobs = plan(cfg, params.classes, info.prompts, sources)
    work = layout.work_dir("generate", generation_identity(cfg, info.fingerprint, size, jobs))
    stale = clean_stale(layout, work)
    if stale:
        print(f"generate: removed {len(stale)} leftover(s) of earlier runs", file=sys.stderr)
    if not resume:
        remove(work)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device, torch.float16 if device == "cuda" else torch.float32)
    start = time.perf_counter()
    made = generate_images(
        pipe,
        jobs,
        cfg,
        out_dir=work / "images",
        size=size,
        canvas=canvas,
        raw=layout.raw,
        on_image=on_image,
    )
    seconds = time.perf_counter() - start
    provenance = {"fold": layout.fold, "split_sha256": split_sha256}
    publish(work / "images", jobs, cfg, layout.synthetic, provenance=provenance)
    remove(work)
    sheet = contact_sheet_image(
        layout,
        train,
        params.classes,
        per_class=cfg.contact_sheet_per_class,
        crop=size if info.extra.get("scale") else None,
    )
    with atomic_path(layout.fold_reports / SHEET) as tmp:
        sheet.save(tmp, format="PNG")
    summary = {
        "images": len(jobs),
        "generated": made,
        "skipped": len(jobs) - made,
        "seconds": round(seconds, 2),
        "work": str(work),
        "canvas": canvas,
    }
    if run_id is not None:
        import mlflow

        from lymphaug.diffusion.track import flat_params

        mlflow.log_params(
            {
                **flat_params("generate", cfg),
                "model": info.fingerprint,
                "sampled_at": "x".join(map(str, canvas.sample)),
            }
        )
        mlflow.log_metrics(
            {
                "images": len(jobs),
                "generated": made,
                "seconds": seconds,
                "images_per_s": made / seconds if made else 0.0,
            }
        )
        mlflow.log_artifact(str(layout.fold_reports / SHEET))
        mlflow.log_artifact(str(layout.synthetic / "manifest.csv"))
    return summary


def run(params: Params, layout: Layout, args) -> int:
    from lymphaug.diffusion.loading import cpu_threads

    with cpu_threads(_base_of(layout), params.finetune.num_threads):
        summary = generate(params, layout, resume=not getattr(args, "no_resume", False))
    note = f" ({summary['skipped']} already done, resumed)" if summary["skipped"] else ""
    print(
        f"generate: {summary['images']} images{note} in {summary['seconds']:.1f} s "
        f"-> {layout.synthetic}; contact sheet {layout.fold_reports / SHEET}"
    )
    return 0


def _base_of(layout: Layout) -> str:
    """The fine-tuned model's base ("" if none yet), to pick CPU threads before loading it."""
    from lymphaug.diffusion.loading import read_info

    try:
        return read_info(layout.diffusion_model).base_model
    except DataError:
        return ""
