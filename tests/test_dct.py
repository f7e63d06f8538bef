"""dct: both methods corrected (clipping, real sigma, DC kept), seeded, train-only, end to end."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.output import without_progress

from lymphaug.augmentation.dct import (
    augment_dataset,
    augmented_copies,
    dct2,
    image_rng,
    method1,
    method1_float,
    method2,
    method2_float,
    mode_and_std,
)
from lymphaug.cli import main
from lymphaug.common import manifest
from lymphaug.common.config import DctConfig, SplitConfig
from lymphaug.common.errors import LeakageError
from lymphaug.common.files import sha256_file
from lymphaug.common.images import read_rgb, save_png
from lymphaug.common.paths import Layout
from lymphaug.split import assign_splits


def textured(rng: np.random.Generator, n: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Smooth H&E-ish colours plus texture: a uint8 (n, h, w, 3) batch."""
    base = np.array([200.0, 120.0, 180.0])
    yy, xx = np.mgrid[0:h, 0:w]
    wave = 30 * np.sin(xx[..., None] / 3.0 + yy[..., None] / 5.0 + np.arange(3))
    x = base + wave + rng.normal(0, 15, (n, h, w, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_raw(root: Path, per_class: int = 6, classes=("CLL", "FL", "MCL")) -> pd.DataFrame:
    """A tiny data/raw (PNGs + manifest) the way ingest writes it."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in classes:
        for i, img in enumerate(textured(rng, per_class)):
            rel = f"{cls}/{i:03d}.png"
            save_png(img, root / rel)
            rows.append(
                {
                    "path": rel,
                    "class": cls,
                    "sha256": hashlib.sha256(img).hexdigest(),
                    "width": img.shape[1],
                    "height": img.shape[0],
                    "source": rel,
                }
            )
    raw = pd.DataFrame(rows, columns=manifest.RAW_COLUMNS)
    manifest.write_table(raw, root / "manifest.csv", manifest.RAW_COLUMNS)
    return raw


def rngs(paths, copy=0, seed=0):
    return [image_rng(seed, p, copy) for p in paths]


# --- the transforms -------------------------------------------------------------------


def test_method2_clips_instead_of_wrapping():
    bright = np.full((2, 16, 16, 3), 250, np.uint8)
    bright[:, ::2] = 255
    out_float = method2_float(dct2(bright.astype(np.float32)), 400.0, rngs(["a", "b"]))
    assert out_float.max() > 300 and out_float.min() < -40  # really out of range before clipping
    out = method2(bright, 400.0, rngs(["a", "b"]))
    assert out.dtype == np.uint8
    # wrapped values (e.g. 300 -> 44) would put dark speckle where the float was bright
    assert (out[out_float > 255] == 255).all() and (out[out_float < 0] == 0).all()
    assert np.array_equal(out, np.clip(np.rint(out_float), 0, 255))


def test_method2_sigma_changes_image_sigma_zero_returns_it():
    batch = textured(np.random.default_rng(1), 3)
    same = method2(batch, 0.0, rngs("abc"))
    assert np.array_equal(same, batch)
    noisy_float = method2_float(dct2(batch.astype(np.float32)), 20.0, rngs("abc"))
    assert np.abs(noisy_float - batch).mean() > 2.0
    # DC untouched: the mean of each image and channel is preserved exactly (before rounding)
    np.testing.assert_allclose(noisy_float.mean(axis=(1, 2)), batch.mean(axis=(1, 2)), atol=1e-3)
    # pixel noise std = sigma / sqrt(12) (orthonormal DCT keeps energy)
    assert abs((noisy_float - batch).std() - 20.0 / np.sqrt(12)) < 0.3


def test_method1_keeps_dc_and_changes_image():
    batch = textured(np.random.default_rng(2), 3)
    out_float = method1_float(batch, 2.0)
    np.testing.assert_allclose(out_float.mean(axis=(1, 2)), batch.mean(axis=(1, 2)), atol=1e-3)
    out = method1(batch, 2.0)
    assert out.shape == batch.shape and out.dtype == np.uint8
    assert np.abs(out.astype(float) - batch).mean() > 1.0
    assert np.abs(out.mean(axis=(1, 2)) - batch.mean(axis=(1, 2))).max() < 1.0


def test_method1_band_matches_per_image_definition():
    """Vectorised batch == the definition applied to one image and channel at a time."""
    import scipy.fft

    batch = textured(np.random.default_rng(3), 2)
    got = method1(batch, 1.5)
    for n in range(2):
        for c in range(3):
            ch = batch[n, :, :, c]
            mode = np.bincount(ch.ravel(), minlength=256).argmax()
            std = ch.astype(np.float64).std()
            coef = scipy.fft.dctn(ch.astype(np.float64), norm="ortho")
            keep = (np.abs(coef) >= mode - 1.5 * std) & (np.abs(coef) <= mode + 1.5 * std)
            keep[0, 0] = True
            ref = np.clip(np.rint(scipy.fft.idctn(coef * keep, norm="ortho")), 0, 255)
            assert np.abs(got[n, :, :, c] - ref).max() <= 1  # float32 vs float64 rounding
    mode, std = mode_and_std(batch)
    assert mode.shape == std.shape == (2, 3)
    np.testing.assert_allclose(std, batch.astype(np.float64).std(axis=(1, 2)), atol=1e-9)


def test_noise_is_per_image_not_per_batch():
    batch = textured(np.random.default_rng(4), 4)
    paths = ["CLL/0.png", "CLL/1.png", "FL/0.png", "FL/1.png"]
    cfg = DctConfig(copies_per_image=2)
    whole = dict(augmented_copies(batch, paths, "method2", cfg))
    alone = dict(augmented_copies(batch[2:3], paths[2:3], "method2", cfg))
    assert np.array_equal(whole[1][2], alone[1][0])  # same image, same copy, other batch
    assert not np.array_equal(whole[0][2], whole[1][2])  # copies differ
    again = dict(augmented_copies(batch, paths, "method2", DctConfig(copies_per_image=2)))
    other = dict(augmented_copies(batch, paths, "method2", DctConfig(copies_per_image=2, seed=1)))
    assert np.array_equal(whole[0], again[0]) and not np.array_equal(whole[0], other[0])


# --- the data set level ------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    raw_root = tmp_path / "data" / "raw"
    raw = make_raw(raw_root)
    (split,) = assign_splits(raw, SplitConfig())
    return raw_root, raw, split


def test_test_image_handed_to_augmentation_fails(tiny, tmp_path):
    raw_root, raw, split = tiny
    test_rows = split[split["split"] == "test"].head(1)
    train_rows = split[split["split"] == "train"]
    handed = pd.concat([train_rows, test_rows])[["path", "class"]]
    out = tmp_path / "out"
    with pytest.raises(LeakageError, match=rf"{test_rows['path'].iloc[0]} \(test\)"):
        augment_dataset(raw_root, handed, split=split, cfg=DctConfig(), out_root=out)
    assert not out.exists()  # refused before writing anything
    val_rows = split[split["split"] == "val"][["path", "class"]]
    with pytest.raises(LeakageError, match="val"):
        augment_dataset(raw_root, val_rows, split=split, cfg=DctConfig(), out_root=out)


def test_copies_manifest_and_determinism(tiny, tmp_path):
    raw_root, raw, split = tiny
    train = split[split["split"] == "train"][["path", "class"]]
    cfg = DctConfig(copies_per_image=3)
    rows = augment_dataset(
        raw_root, train, split=split, cfg=cfg, out_root=tmp_path / "a", batch_size=4
    )
    assert list(rows.columns) == manifest.DCT_ROW_COLUMNS  # the stage adds the provenance
    n = len(train)
    assert (rows["method"] == "method2").sum() == 3 * n  # copies_per_image per training image
    assert (rows["method"] == "method1").sum() == n  # deterministic: one copy
    assert set(rows["source"]) == set(train["path"])
    assert (rows.groupby(["method", "source"]).size().loc["method2"] == 3).all()
    for r in rows.itertuples():
        assert r.path.startswith(f"{r.method}/{r._2}/")  # <method>/<class>/...
        assert raw.set_index("path").loc[r.source, "class"] == r._2
        img = read_rgb(tmp_path / "a" / r.path)
        assert img.shape == read_rgb(raw_root / r.source).shape
    files = sorted(
        p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png")
    )
    assert files == sorted(rows["path"])
    # same seed, other batch size: byte-identical files
    augment_dataset(raw_root, train, split=split, cfg=cfg, out_root=tmp_path / "b", batch_size=5)
    for rel in rows["path"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = augment_dataset(
        raw_root,
        train.head(2),
        split=split,
        cfg=DctConfig(seed=7),
        out_root=tmp_path / "c",
        batch_size=4,
    )
    m2 = other[other["method"] == "method2"]["path"].iloc[0]
    assert (tmp_path / "a" / m2).read_bytes() != (tmp_path / "c" / m2).read_bytes()


def test_mixed_sizes_are_batched_by_shape(tmp_path):
    raw_root = tmp_path / "raw"
    rng = np.random.default_rng(5)
    rows = []
    for i, (h, w) in enumerate([(20, 30), (24, 16), (20, 30)]):
        save_png(textured(rng, 1, h, w)[0], raw_root / f"A/{i}.png")
        rows.append({"path": f"A/{i}.png", "class": "A", "split": "train", "fold": 0})
    split = pd.DataFrame(rows)
    out = augment_dataset(
        raw_root, split[["path", "class"]], split=split, cfg=DctConfig(), out_root=tmp_path / "o"
    )
    for r in out.itertuples():
        assert read_rgb(tmp_path / "o" / r.path).shape == read_rgb(raw_root / r.source).shape


def test_cli_end_to_end(tmp_path, repo_root, capsys):
    make_raw(tmp_path / "data" / "raw")
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    args = ["--params", str(params), "--root", str(tmp_path)]
    layout = Layout(tmp_path)
    assert main([*args, "split"]) == 0
    assert main([*args, "dct"]) == 0
    dct = manifest.read_table(layout.dct / "manifest.csv", manifest.DCT_COLUMNS)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    n_train = (split["split"] == "train").sum()
    assert dct.groupby("method").size().to_dict() == {"method1": n_train, "method2": n_train}
    manifest.assert_train_only(dct["source"], split, "test")
    # the fold and the split file it was made from, on every row (train checks them)
    assert (dct["fold"] == 0).all() and set(dct["split_sha256"]) == {sha256_file(layout.split_csv)}
    sheet = read_rgb(layout.dct_contact_sheet)
    assert sheet.shape[0] > 3 * 2 * 20 and sheet.shape[1] > 3 * 200  # 6 rows, 3 columns
    assert not list(layout.dct.parent.glob(".*tmp"))  # nothing half-written left
    # a split file that lists an image the raw manifest does not have (stale) is an error
    split.loc[0, "path"] = "CLL/gone.png"
    manifest.write_table(split, layout.split_csv, manifest.SPLIT_COLUMNS)
    assert main([*args, "dct"]) == 2
    assert "not in the raw manifest" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_images(real_data):
    """On real H&E images: means kept, method 2's noise has the configured size."""
    batch = np.stack(
        [
            read_rgb(real_data / c / f)
            for c, f in [("CLL", "000.png"), ("FL", "113.png"), ("MCL", "252.png")]
        ]
    )
    m1 = method1(batch, 2.0).astype(float)
    m2 = method2(batch, 20.0, rngs(["a", "b", "c"])).astype(float)
    for out in (m1, m2):
        assert np.abs(out.mean(axis=(1, 2)) - batch.mean(axis=(1, 2))).max() < 1.5
    assert abs((m2 - batch).std() - 20.0 / np.sqrt(12)) < 0.3
    assert not np.array_equal(m1, batch)


def test_disk_full_and_kill_leftovers(tmp_path, repo_root, monkeypatch, capsys):
    """A full disk is one line naming the file and the free space; leftovers go at the next
    start. The PNG write goes to /dev/full: the kernel's own ENOSPC."""
    from pathlib import Path

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    make_raw(tmp_path / "data" / "raw")
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    args = ["--params", str(params), "--root", str(tmp_path)]
    assert main([*args, "split"]) == 0
    layout = Layout(tmp_path)
    killed = layout.dct.parent / ".fold_0.k1ll3d.tmp"  # what kill -9 mid-dct leaves
    (killed / "method1").mkdir(parents=True)
    real_write = Path.write_bytes

    def write_to_a_full_disk(self, data):
        if ".fold_0." in str(self):
            with open("/dev/full", "wb") as full:
                full.write(data)
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_to_a_full_disk)
    capsys.readouterr()
    assert main([*args, "dct"]) == 2
    err = without_progress(capsys.readouterr().err)
    assert len(err.splitlines()) == 1, err
    assert re.match(
        rf"lymphaug dct: error: no space left on device writing {layout.dct}/method\d/"
        r"\w+/\S+\.png \(\d+\.\d [KMGT]iB free there\)",
        err,
    ), err
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dct", "raw", "splits"]
    assert not list(layout.dct.parent.iterdir())  # neither the killed run's nor this one's
