"""The ingest stage on real files: every source, every format, every bad input."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fixtures.output import without_progress
from PIL import Image

from lymphaug import ingest
from lymphaug.cli import main
from lymphaug.common.config import Params, parse_params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.manifest import RAW_COLUMNS, SPLIT_COLUMNS, read_table
from lymphaug.common.paths import Layout
from lymphaug.sources import archive as archive_src

CLASSES = ["CLL", "FL", "MCL"]


def make_params(**ingest_cfg) -> Params:
    return parse_params({"ingest": ingest_cfg})


def run_ingest(root: Path, **ingest_cfg) -> Layout:
    layout = Layout(root)
    ingest.run(make_params(**ingest_cfg), layout, None)
    return layout


def noise(seed: int, h: int = 12, w: int = 16, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def tiny_dataset(root: Path, per_class: int = 2, suffix: str = ".png", size=(16, 12)) -> Path:
    """root/<class>/<i><suffix>: distinct random RGB images."""
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(noise(100 * c + i, size[1], size[0])).save(root / cls / f"{i}{suffix}")
    return root


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --- sample -----------------------------------------------------------------


def test_sample_is_deterministic_and_shaped_like_the_real_set(tmp_path):
    default = make_params()
    items = ingest.sample_items(default)
    assert [i.cls for i in items].count("CLL") == 30 and len(items) == 90

    # each image has its own random stream, so 3 per class are the default set's first 3
    layout = run_ingest(tmp_path / "a", sample={"per_class": 3})
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert df["class"].value_counts().to_dict() == {"CLL": 3, "FL": 3, "MCL": 3}
    assert set(df["width"]) == {417} and set(df["height"]) == {312}
    with Image.open(layout.raw / df["path"][0]) as img:
        assert img.mode == "RGB" and img.size == (417, 312)
    sha = hashlib.sha256((layout.raw / df["path"][0]).read_bytes()).hexdigest()
    assert sha == df["sha256"][0]
    assert df["sha256"].is_unique

    again = run_ingest(tmp_path / "b", sample={"per_class": 3})
    assert read_table(again.raw_manifest, RAW_COLUMNS).equals(df)
    other = run_ingest(tmp_path / "c", sample={"per_class": 3, "seed": 1})
    assert set(read_table(other.raw_manifest, RAW_COLUMNS)["sha256"]).isdisjoint(df["sha256"])


def test_sample_classes_differ_in_nuclei():
    """Coverage of dark (hematoxylin) pixels: CLL dense, MCL sparser; FL clumped."""
    from lymphaug.sources.sample import sample_image

    def stats(c):
        imgs = [sample_image(0, c, i, height=156, width=208).astype(float) for i in range(4)]
        dark = [(im.sum(axis=2) < 400) for im in imgs]
        coverage = np.mean([d.mean() for d in dark])
        # clumping: variance of dark coverage over 26x26 tiles
        tiles = np.mean([d.reshape(6, 26, 8, 26).mean(axis=(1, 3)).std() for d in dark])
        return coverage, tiles

    cll, fl, mcl = stats(0), stats(1), stats(2)
    assert cll[0] > mcl[0]
    assert fl[1] > cll[1] and fl[1] > mcl[1]


# --- folder -----------------------------------------------------------------


def test_folder_converts_every_pil_format(tmp_path):
    src = tmp_path / "src"
    for cls in CLASSES:
        (src / cls).mkdir(parents=True)
    rgb = noise(1)
    Image.fromarray(rgb).save(src / "CLL" / "a.png")
    gx, gy = np.meshgrid(np.arange(16) * 15, np.arange(12) * 20)
    smooth = np.dstack([gx, gy, np.full((12, 16), 90)])
    Image.fromarray(smooth.astype(np.uint8)).save(src / "CLL" / "b.jpg", quality=95)
    # 16-bit grayscale TIFF: 0, 32768 and 65535 must map to 0, 128, 255 (scaled, not clipped)
    g16 = np.zeros((12, 16), np.uint16)
    g16[:, 5:10], g16[:, 10:] = 32768, 65535
    img16 = Image.fromarray(g16)
    assert img16.mode.startswith("I;16")
    img16.save(src / "FL" / "c.tif")
    # RGBA: a fully transparent half composites onto white
    rgba = np.dstack([noise(3), np.full((12, 16), 255, np.uint8)])
    rgba[:, 8:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(src / "FL" / "d.png")
    Image.fromarray(noise(4, channels=1), "L").save(src / "MCL" / "e.png")
    Image.fromarray(noise(5)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        src / "MCL" / "f.gif"
    )
    layout = run_ingest(tmp_path, source="folder", folder="src")

    df = read_table(layout.raw_manifest, RAW_COLUMNS).set_index("source")
    assert sorted(df.index) == [
        "CLL/a.png",
        "CLL/b.jpg",
        "FL/c.tif",
        "FL/d.png",
        "MCL/e.png",
        "MCL/f.gif",
    ]
    assert sorted(df["path"]) == [
        "CLL/a.png",
        "CLL/b.png",
        "FL/c.png",
        "FL/d.png",
        "MCL/e.png",
        "MCL/f.png",
    ]

    def out(source):
        with Image.open(layout.raw / df.loc[source, "path"]) as img:
            assert img.mode == "RGB" and img.size == (16, 12)
            return np.asarray(img)

    assert np.array_equal(out("CLL/a.png"), rgb)
    assert np.abs(out("CLL/b.jpg").astype(int) - smooth).mean() < 5
    tif = out("FL/c.tif")
    assert tif[0, 0].tolist() == [0, 0, 0]
    assert tif[0, 7].tolist() == [128, 128, 128]
    assert tif[0, 12].tolist() == [255, 255, 255]
    d = out("FL/d.png")
    assert np.array_equal(d[:, :8], noise(3)[:, :8]) and (d[:, 8:] == 255).all()
    e = out("MCL/e.png")
    assert np.array_equal(e[..., 0], noise(4, channels=1)) and (e[..., 0] == e[..., 2]).all()
    assert out("MCL/f.gif").std() > 10


def test_resize_scales_every_image(tmp_path):
    tiny_dataset(tmp_path / "src", size=(40, 30))
    layout = run_ingest(tmp_path, source="folder", folder="src", resize=[20, 16])
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert set(df["width"]) == {20} and set(df["height"]) == {16}
    for p in df["path"]:
        with Image.open(layout.raw / p) as img:
            assert img.size == (20, 16)


def test_reingest_replaces_the_old_data_set(tmp_path):
    tiny_dataset(tmp_path / "src", per_class=3)
    layout = run_ingest(tmp_path, source="folder", folder="src")
    (tmp_path / "src" / "CLL" / "2.png").unlink()
    run_ingest(tmp_path, source="folder", folder="src")
    assert not (layout.raw / "CLL" / "2.png").exists()
    assert len(read_table(layout.raw_manifest, RAW_COLUMNS)) == 8


# --- bad input --------------------------------------------------------------


def test_unreadable_files_are_all_named_at_once(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    good = (src / "CLL" / "0.png").read_bytes()
    (src / "CLL" / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "FL" / "notes.txt").write_text("scanned on a Tuesday\n")
    (src / "MCL" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # ignorable: not reported
    (src / "MCL" / "Thumbs.db").write_bytes(b"\0")
    with pytest.raises(DataError) as err:
        run_ingest(tmp_path, source="folder", folder="src")
    text = str(err.value)
    assert "2 unreadable file(s)" in text
    assert "CLL/truncated.png" in text and "FL/notes.txt" in text
    assert ".DS_Store" not in text and "Thumbs.db" not in text
    assert not (tmp_path / "data").exists() or not files_under(tmp_path / "data")


def test_on_unreadable_skip_leaves_them_out_and_reports(tmp_path, capsys):
    src = tiny_dataset(tmp_path / "src")
    (src / "FL" / "notes.txt").write_text("not an image\n")
    good = (src / "CLL" / "0.png").read_bytes()
    (src / "CLL" / "truncated.png").write_bytes(good[:60])
    layout = run_ingest(tmp_path, source="folder", folder="src", on_unreadable="skip")
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert len(df) == 6
    report = (layout.raw / "skipped.txt").read_text()
    assert "FL/notes.txt\tunreadable" in report and "CLL/truncated.png\tunreadable" in report
    assert "FL/notes.txt" in capsys.readouterr().err


def test_empty_class_folder(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    for p in (src / "MCL").iterdir():
        p.unlink()
    (src / "MCL" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match=r"class MCL: folder MCL/ holds no images"):
        run_ingest(tmp_path, source="folder", folder="src")


def test_class_with_only_unreadable_files_is_an_error_even_when_skipping(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    for p in (src / "MCL").iterdir():
        p.write_text("corrupt")
    with pytest.raises(DataError, match=r"\['MCL'\] have no readable images"):
        run_ingest(tmp_path, source="folder", folder="src", on_unreadable="skip")


def test_folder_not_in_configured_classes(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    (src / "DLBCL").mkdir()
    Image.fromarray(noise(99)).save(src / "DLBCL" / "x.png")
    (src / "README.md").write_text("documentation at the root is fine\n")
    (src / ".git").mkdir()
    with pytest.raises(DataError, match=r"folder\(s\) \['DLBCL'\] are not configured classes"):
        run_ingest(tmp_path, source="folder", folder="src")


def test_missing_class_folder(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    for p in (src / "FL").iterdir():
        p.unlink()
    (src / "FL").rmdir()
    with pytest.raises(DataError, match="class FL: no folder FL/"):
        run_ingest(tmp_path, source="folder", folder="src")


def test_same_image_under_two_classes_names_both(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    # same pixels, different format: still the same image
    with Image.open(src / "CLL" / "1.png") as img:
        img.save(src / "MCL" / "copy.tif")
    (src / "FL" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        run_ingest(tmp_path, source="folder", folder="src")
    # both problems in one error: the ambiguous label and the unreadable file
    assert "CLL/1.png and MCL/copy.tif" in str(err.value)
    assert "FL/notes.txt" in str(err.value)
    assert not (tmp_path / "data" / "raw").exists()


def test_duplicate_within_a_class_is_dropped_and_reported(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    (src / "FL" / "again.png").write_bytes((src / "FL" / "0.png").read_bytes())
    layout = run_ingest(tmp_path, source="folder", folder="src")
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert len(df) == 6 and "FL/again.png" not in set(df["source"])
    assert not (layout.raw / "FL" / "again.png").exists()
    assert "FL/again.png\tduplicate of FL/0.png" in (layout.raw / "skipped.txt").read_text()


def test_same_stem_in_two_formats_gets_distinct_names(tmp_path):
    src = tiny_dataset(tmp_path / "src")
    Image.fromarray(noise(77)).save(src / "CLL" / "0.jpg")
    (src / "CLL" / "sub dir").mkdir()
    Image.fromarray(noise(78)).save(src / "CLL" / "sub dir" / "x.png")
    layout = run_ingest(tmp_path, source="folder", folder="src")
    paths = set(read_table(layout.raw_manifest, RAW_COLUMNS)["path"])
    assert {"CLL/0_png.png", "CLL/0_jpg.png", "CLL/1.png", "CLL/sub_dir__x.png"} <= paths


def test_cli_bad_input_exits_2_with_one_line_message(tmp_path, capsys):
    src = tiny_dataset(tmp_path / "src")
    (src / "FL" / "notes.txt").write_text("x")
    params = tmp_path / "params.yaml"
    params.write_text("ingest: {source: folder, folder: src}\n")
    assert main(["--params", str(params), "--root", str(tmp_path), "ingest"]) == 2
    err = without_progress(capsys.readouterr().err)
    assert err.startswith("lymphaug ingest: error: 1 unreadable file(s)")
    assert "FL/notes.txt" in err and "Traceback" not in err


# --- mat ----------------------------------------------------------------------


def write_benchmark_mat(path: Path, n_per_class=(3, 4, 3), folds: int = 5, dim1: int = 8) -> None:
    """A DatasColor-style file: DATA = {images, labels, DIV, DIM1, DIM2}."""
    import scipy.io

    labels = np.repeat(np.arange(1, 4), n_per_class)
    n = len(labels)
    images = np.empty((1, n), dtype=object)
    for k in range(n):
        images[0, k] = noise(200 + k, 9, 11)
    images[0, n - 1] = noise(300, 9, 11, channels=1).astype(np.uint16) * 257  # 16-bit gray
    rng = np.random.default_rng(0)
    div = np.stack([rng.permutation(n) + 1 for _ in range(folds)]).astype(float)
    data = np.empty((1, 5), dtype=object)
    data[0, :] = [images, labels[None].astype(float), div, np.array([[dim1]]), np.array([[n]])]
    scipy.io.savemat(path, {"DATA": data})


def test_mat_source_reads_images_labels_and_the_chosen_fold(tmp_path):
    import scipy.io

    write_benchmark_mat(tmp_path / "DatasColor_29.mat")
    layout = run_ingest(tmp_path, source="mat", mat={"path": "DatasColor_29.mat", "fold": 2})
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert df["class"].value_counts().to_dict() == {"CLL": 3, "FL": 4, "MCL": 3}
    # index in the file, like the shared PNG copy's names (CLL 000-112, FL 113-...)
    assert df["path"].tolist()[:4] == ["CLL/000.png", "CLL/001.png", "CLL/002.png", "FL/003.png"]
    assert df.set_index("path").loc["FL/003.png", "source"] == "DatasColor_29.mat:DATA{1}{4}"
    with Image.open(layout.raw / "CLL" / "000.png") as img:
        assert np.array_equal(np.asarray(img), noise(200, 9, 11))
    with Image.open(layout.raw / "MCL" / "009.png") as img:
        assert np.array_equal(np.asarray(img)[..., 1], noise(300, 9, 11, channels=1))

    # every fold of the file is recorded (0-based: row f + 1); split picks ingest.mat.fold or all
    recorded = read_table(layout.raw_predefined_split, SPLIT_COLUMNS)
    assert sorted(set(recorded["fold"])) == [0, 1, 2, 3, 4]
    div = scipy.io.loadmat(tmp_path / "DatasColor_29.mat")["DATA"][0, 2]
    for fold in range(5):
        split = recorded[recorded["fold"] == fold].reset_index(drop=True)
        assert split["split"].value_counts().to_dict() == {"train": 8, "val": 2}
        train_idx = sorted(int(i) - 1 for i in div[fold, :8])
        assert sorted(split.index[split["split"] == "train"]) == train_idx  # sorted by index


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"fold": 6}, r"ingest.mat.fold 6 out of range 1..5"),
        ({"images_key": "X"}, r"no variable 'X' \(ingest.mat.images_key\); it has \['DATA'\]"),
    ],
)
def test_mat_source_bad_config_is_named(tmp_path, cfg, message):
    write_benchmark_mat(tmp_path / "d.mat")
    with pytest.raises(DataError, match=message):
        run_ingest(tmp_path, source="mat", mat={"path": "d.mat", **cfg})


def test_mat_source_unreadable_file(tmp_path):
    (tmp_path / "d.mat").write_bytes(b"MATLAB 7.3 MAT-file" + bytes(200))
    with pytest.raises(DataError, match="d.mat: "):
        run_ingest(tmp_path, source="mat", mat={"path": "d.mat"})
    assert not (tmp_path / "data").exists()


# --- archive ----------------------------------------------------------------


def iicbu_like_tree(root: Path) -> Path:
    """lymphoma/<class>/*.tif (tiny stand-ins for the 1388 x 1040 originals)."""
    top = root / "lymphoma"
    for c, cls in enumerate(CLASSES):
        (top / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(noise(10 * c + i, 13, 17)).save(top / cls / f"sj-{c}{i}.tif")
    (top / ".DS_Store").write_bytes(b"x")
    return top


def make_tar(path: Path, tree: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_zip(path: Path, tree: Path) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for f in files_under(tree):
            zf.write(f, f.relative_to(tree.parent).as_posix())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_iicbu_ingested(layout: Layout, archive_name: str) -> None:
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert df["class"].value_counts().to_dict() == {"CLL": 2, "FL": 2, "MCL": 2}
    assert set(df["width"]) == {17} and set(df["height"]) == {13}
    assert f"{archive_name}:lymphoma/CLL/sj-00.tif" in set(df["source"])
    assert "CLL/sj-00.png" in set(df["path"])


def test_local_archive_with_top_level_folder(tmp_path):
    sha = make_tar(tmp_path / "lymphoma.tar.gz", iicbu_like_tree(tmp_path / "tree"))
    layout = run_ingest(
        tmp_path, source="archive", archive={"url": "lymphoma.tar.gz", "sha256": sha.upper()}
    )
    assert_iicbu_ingested(layout, "lymphoma.tar.gz")
    assert not files_under(layout.work)  # the unpacked copy is gone


def test_file_url_zip(tmp_path):
    sha = make_zip(tmp_path / "set.zip", iicbu_like_tree(tmp_path / "tree"))
    url = (tmp_path / "set.zip").as_uri()
    layout = run_ingest(tmp_path / "repo", source="archive", archive={"url": url, "sha256": sha})
    assert_iicbu_ingested(layout, "set.zip")


def test_archive_checksum_mismatch(tmp_path):
    make_tar(tmp_path / "a.tgz", iicbu_like_tree(tmp_path / "tree"))
    with pytest.raises(
        DataError, match=r"a.tgz: sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"
    ):
        run_ingest(tmp_path, source="archive", archive={"url": "a.tgz", "sha256": "0" * 64})
    assert not (tmp_path / "data").exists()


def test_archive_without_checksum_tells_the_actual_one(tmp_path):
    sha = make_tar(tmp_path / "a.tgz", iicbu_like_tree(tmp_path / "tree"))
    with pytest.raises(DataError, match=f"sha256 is not set; this file's sha256 is {sha}"):
        run_ingest(tmp_path, source="archive", archive={"url": "a.tgz"})


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(seed)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "evil",
    ["../evil.png", "CLL/../../evil.png", "/tmp/lymphaug-evil.png", "link"],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out"],
)
def test_archive_member_escaping_is_refused(tmp_path, evil):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for c, cls in enumerate(CLASSES):
            add_bytes(tar, f"{cls}/ok.png", png(c))
        if evil == "link":
            add_bytes(tar, "CLL/link.png", b"", type=tarfile.SYMTYPE, linkname="../../outside.png")
        else:
            add_bytes(tar, evil, png(9))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    repo = tmp_path / "repo"
    with pytest.raises(DataError, match="refusing to unpack unsafe member"):
        run_ingest(repo, source="archive", archive={"url": str(path), "sha256": sha})
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/lymphaug-evil.png").exists()
    assert not (repo / "data").exists() and not files_under(repo / "work")


def zip_of(path: Path, members: dict[str, bytes]) -> str:
    """Write a zip holding ``members`` (name -> bytes) verbatim; return its sha256."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zip_member_escaping_is_refused(tmp_path):
    path = tmp_path / "a.zip"
    sha = zip_of(path, {"CLL/ok.png": png(1), "../evil.png": png(2)})
    with pytest.raises(DataError, match=r"'\.\./evil\.png' escapes the target folder"):
        run_ingest(tmp_path / "repo", source="archive", archive={"url": str(path), "sha256": sha})
    assert not (tmp_path / "evil.png").exists()


@pytest.fixture
def http_root(tmp_path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """A real loopback HTTP server over a folder; yields (base URL, folder)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/broken/"):
                # announce the whole file, send a third of it, hang up
                data = (folder / self.path.removeprefix("/broken/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 3])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=folder))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_archive_over_http_with_iicbu_layout(tmp_path, http_root):
    base, www = http_root
    sha = make_tar(www / "lymphoma.tar.gz", iicbu_like_tree(tmp_path / "tree"))
    repo = tmp_path / "repo"
    cfg = {"url": f"{base}/lymphoma.tar.gz", "sha256": sha}
    layout = run_ingest(repo, source="archive", archive=cfg)
    assert_iicbu_ingested(layout, "lymphoma.tar.gz")
    # the verified download is cached by checksum; nothing else is left in work/
    assert [p.name for p in files_under(layout.work)] == [sha]
    (www / "lymphoma.tar.gz").unlink()  # a rerun does not need the server
    run_ingest(repo, source="archive", archive=cfg)
    assert_iicbu_ingested(layout, "lymphoma.tar.gz")


def test_download_dropped_half_way_leaves_nothing(tmp_path, http_root):
    base, www = http_root
    sha = make_tar(www / "lymphoma.tar.gz", iicbu_like_tree(tmp_path / "tree"))
    repo = tmp_path / "repo"
    cfg = {"url": f"{base}/broken/lymphoma.tar.gz", "sha256": sha}
    with pytest.raises(DataError, match=r"download incomplete: got \d+ of \d+ bytes"):
        run_ingest(repo, source="archive", archive=cfg)
    assert not (repo / "data").exists()
    assert not files_under(repo / "work")


def test_download_http_error_is_clear(tmp_path, http_root):
    base, _ = http_root
    cfg = {"url": f"{base}/missing.tar.gz", "sha256": "0" * 64}
    with pytest.raises(DataError, match=r"download failed .*404"):
        run_ingest(tmp_path, source="archive", archive=cfg)
    assert not files_under(tmp_path)


# --- the real data set ------------------------------------------------------


@pytest.mark.realdata
def test_real_data_folder(tmp_path, real_data):
    layout = run_ingest(tmp_path, source="folder", folder=str(real_data))
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert len(df) == 374
    assert df["class"].value_counts().to_dict() == {"CLL": 113, "FL": 139, "MCL": 122}
    assert set(df["width"]) == {417} and set(df["height"]) == {312}
    assert not (layout.raw / "skipped.txt").exists()


def test_archive_without_class_folders_says_what_it_found(tmp_path):
    path = tmp_path / "a.zip"
    sha = zip_of(path, {"data/images/x.png": png(1), "data/other/y.png": png(2)})
    with pytest.raises(DataError, match=r"a.zip: no class folders .* holds \['images', 'other'\]"):
        run_ingest(tmp_path / "repo", source="archive", archive={"url": str(path), "sha256": sha})
    assert not files_under(tmp_path / "repo")


def test_archive_extra_class_folder_is_named(tmp_path):
    tree = iicbu_like_tree(tmp_path / "tree")
    (tree / "DLBCL").mkdir()
    Image.fromarray(noise(50)).save(tree / "DLBCL" / "z.tif")
    sha = make_tar(tmp_path / "a.tgz", tree)
    with pytest.raises(DataError, match=r"a.tgz:lymphoma/: folder\(s\) \['DLBCL'\] are not"):
        run_ingest(tmp_path, source="archive", archive={"url": "a.tgz", "sha256": sha})


# --- archive limits: nothing may fill the disk ---------------------------------------------


def zeros_zip(path: Path, members: dict[str, int], level: int = 6) -> str:
    """A real zip of members holding ``size`` zero bytes each, streamed (deflate); its sha256."""
    with zipfile.ZipFile(path, "w") as zf:
        for c, cls in enumerate(CLASSES):
            zf.writestr(f"{cls}/ok.png", png(c))
        for name, size in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type, info._compresslevel = zipfile.ZIP_DEFLATED, level
            with zf.open(info, "w", force_zip64=True) as out:
                chunk = bytes(1 << 24)
                for start in range(0, size, len(chunk)):
                    out.write(chunk[: size - start])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zip_bomb_member_is_refused_from_its_header_by_default(tmp_path):
    """64 MiB of zeros in 64 KiB: the default ratio limit refuses it before anything is written."""
    path = tmp_path / "bomb.zip"
    sha = zeros_zip(path, {"CLL/big.tif": 64 << 20})
    assert path.stat().st_size < 1 << 20
    repo = tmp_path / "repo"
    with pytest.raises(
        DataError,
        match=r"bomb.zip: refusing to unpack: member 'CLL/big.tif' unpacks 64.0 MiB "
        r"from .*KiB \(\d+:1, more than ingest.archive.max_ratio = 100\)",
    ):
        run_ingest(repo, source="archive", archive={"url": str(path), "sha256": sha})
    assert not (repo / "data").exists() and not files_under(repo / "work")


def test_archive_over_the_size_limit_names_the_member(tmp_path):
    """Incompressible members (ratio 1) over ingest.archive.max_unpacked_bytes in total."""
    path = tmp_path / "big.zip"
    rng = np.random.default_rng(0)
    members = {f"{cls}/ok.png": png(c) for c, cls in enumerate(CLASSES)}
    sha = zip_of(path, {**members, **{f"FL/{i}.bin": rng.bytes(2 << 20) for i in range(3)}})
    repo = tmp_path / "repo"
    cfg = {"url": str(path), "sha256": sha, "max_unpacked_bytes": 5 << 20}
    with pytest.raises(
        DataError,
        match=r"more than 5.0 MiB \(ingest.archive.max_unpacked_bytes = 5242880\), "
        r"6.0 MiB by member 'FL/2.bin'",
    ):
        run_ingest(repo, source="archive", archive=cfg)
    assert not files_under(repo)
    cfg["max_unpacked_bytes"] = 7 << 20  # the same archive under a higher limit unpacks
    with pytest.raises(DataError, match="unreadable file"):  # (and its .bin files fail decoding)
        run_ingest(repo, source="archive", archive=cfg)


def test_compressed_tar_bomb_is_refused_as_a_whole(tmp_path):
    """A tar has no per-member compressed size: the whole archive's ratio is checked."""
    path = tmp_path / "bomb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for c, cls in enumerate(CLASSES):
            add_bytes(tar, f"{cls}/ok.png", png(c))
        add_bytes(tar, "MCL/zeros.tif", bytes(32 << 20))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    repo = tmp_path / "repo"
    with pytest.raises(DataError, match=r"bomb.tar.gz: refusing to unpack: the archive unpacks 32"):
        run_ingest(repo, source="archive", archive={"url": str(path), "sha256": sha})
    assert not files_under(repo)
    with pytest.raises(ConfigError, match=r"ingest.archive.max_ratio"):
        make_params(source="archive", archive={"max_ratio": 0.5})


def test_bytes_are_counted_while_unpacking(tmp_path):
    """A stream longer than its header says, or one past the total, stops mid-member."""
    budget = archive_src._Budget("a.zip", archive_src.Limits(max_bytes=10 << 20, max_ratio=100))
    with pytest.raises(DataError, match=r"member 'x' holds more than the 1000 bytes its header"):
        budget.copy(io.BytesIO(bytes(5000)), tmp_path / "x", name="x", declared=1000)
    budget.copy(io.BytesIO(bytes(6 << 20)), tmp_path / "y", name="y", declared=6 << 20)
    with pytest.raises(DataError, match=r"more than 10.0 MiB .* by member 'z'"):
        budget.copy(io.BytesIO(bytes(6 << 20)), tmp_path / "z", name="z", declared=6 << 20)


@pytest.mark.slow
def test_zip_with_an_8_gib_member_is_refused_in_seconds(tmp_path):
    """The probe's case: an 8 GiB member in a small zip, with the default limits."""
    import time

    path = tmp_path / "bomb.zip"
    sha = zeros_zip(path, {"CLL/huge.tif": 8 * 2**30 + 1}, level=1)
    assert path.stat().st_size < 64 << 20
    repo = tmp_path / "repo"
    start = time.monotonic()
    with pytest.raises(DataError, match=r"member 'CLL/huge.tif' unpacks 8.0 GiB"):
        run_ingest(repo, source="archive", archive={"url": str(path), "sha256": sha})
    assert time.monotonic() - start < 30  # the sha256 of the archive is most of it
    assert not files_under(repo)


# --- Unicode class folder names ---------------------------------------------------------------

NFC_CLASSES = ["CLL", "FL", "Mantelzell-Lymphom-\u00e4"]  # 'ä' as one code point (NFC)


def nfc_params(**ingest_cfg) -> Params:
    prompts = {c: f"image of {c}" for c in NFC_CLASSES}
    return parse_params(
        {"classes": NFC_CLASSES, "finetune": {"prompts": prompts}, "ingest": ingest_cfg}
    )


def test_class_folders_written_in_nfd_match_the_configured_nfc_names(tmp_path):
    """macOS writes 'ä' as 'a' + U+0308: the same name to a person, another string to Python."""
    import unicodedata

    src = tmp_path / "src"
    for c, cls in enumerate(NFC_CLASSES):
        folder = src / unicodedata.normalize("NFD", cls)
        folder.mkdir(parents=True)
        Image.fromarray(noise(c)).save(folder / "0.png")
    assert sorted(p.name for p in src.iterdir())[2] != NFC_CLASSES[2]
    layout = Layout(tmp_path)
    ingest.run(nfc_params(source="folder", folder="src"), layout, None)
    df = read_table(layout.raw_manifest, RAW_COLUMNS)
    assert sorted(df["class"]) == sorted(NFC_CLASSES)
    assert (layout.raw / NFC_CLASSES[2] / "0.png").is_file()  # written under the configured name


def test_nfd_names_in_a_zip_and_look_alikes_are_named_with_escapes(tmp_path):
    import unicodedata

    path = tmp_path / "mac.zip"
    nfd = unicodedata.normalize("NFD", NFC_CLASSES[2])
    members = {f"set/{cls}/0.png": png(c) for c, cls in enumerate(["CLL", "FL", nfd])}
    sha = zip_of(path, members)
    layout = Layout(tmp_path / "repo")
    ingest.run(
        nfc_params(source="archive", archive={"url": str(path), "sha256": sha}), layout, None
    )
    assert set(read_table(layout.raw_manifest, RAW_COLUMNS)["class"]) == set(NFC_CLASSES)
    # a Cyrillic 'С' in 'СLL' looks like the Latin C but is not: the message shows the escape
    src = tiny_dataset(tmp_path / "src")
    (src / "CLL").rename(src / "\u0421LL")
    with pytest.raises(DataError, match=r"folder\(s\) \['СLL' \(written '\\u0421LL'\)\]"):
        run_ingest(tmp_path / "repo2", source="folder", folder=str(src))


# --- interrupted runs, disk full ------------------------------------------------------------


def test_kill_9_leftovers_are_removed_at_the_next_start(tmp_path):
    """A real ingest process killed mid-write leaves data/.raw.*.tmp and an unpacked copy."""
    import signal
    import subprocess
    import sys
    import time

    tree = tmp_path / "tree"
    for c, cls in enumerate(CLASSES):
        (tree / cls).mkdir(parents=True)
        for i in range(60):  # enough that the kill lands mid-write, not after the rename
            Image.fromarray(noise(100 * c + i, 156, 208)).save(tree / cls / f"{i}.png")
    sha = make_tar(tmp_path / "set.tar", tree)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(
        f"ingest: {{source: archive, archive: {{url: {tmp_path / 'set.tar'}, sha256: {sha}}}}}\n"
    )
    from fixtures.processes import env_with_src

    env = env_with_src()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lymphaug.cli", "ingest"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not list((repo / "data").glob(".raw.*.tmp/*/*.png")):
            assert proc.poll() is None and time.monotonic() < deadline, "ingest ended too soon"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    leftovers = [*(repo / "data").glob(".raw.*.tmp"), *(repo / "work/ingest").glob(".unpack-*")]
    assert len(leftovers) == 2
    layout = Layout(repo)
    ingest.run(
        parse_params(
            {
                "ingest": {
                    "source": "archive",
                    "archive": {"url": str(tmp_path / "set.tar"), "sha256": sha},
                }
            }
        ),
        layout,
        None,
    )
    assert not any(p.exists() for p in leftovers)
    assert [p.name for p in (repo / "data").iterdir()] == ["raw"]
    assert not files_under(repo / "work")
    assert len(read_table(layout.raw_manifest, RAW_COLUMNS)) == 180


def test_cached_archives_of_other_checksums_are_dropped(tmp_path):
    work = tmp_path / "work" / "ingest"
    (work / "archives").mkdir(parents=True)
    (work / "archives" / ("a" * 64)).write_bytes(b"old")
    (work / "archives" / ("b" * 64)).write_bytes(b"current")
    (work / ".download-x.part").write_bytes(b"half")
    removed = archive_src.clean_work(work, "B" * 64)
    assert sorted(p.name for p in removed) == [".download-x.part", "a" * 64]
    assert [p.name for p in files_under(work)] == ["b" * 64]


def test_disk_full_while_writing_images_is_one_line(tmp_path, monkeypatch, capsys):
    """The write goes to /dev/full: a real ENOSPC from the kernel, at the stage's write call."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    tiny_dataset(tmp_path / "src")
    (tmp_path / "params.yaml").write_text("ingest: {source: folder, folder: src}\n")
    real_write = Path.write_bytes

    def write_to_a_full_disk(self, data):
        if self.suffix == ".png" and ".raw." in str(self):
            real_write(self, b"")  # the file exists, as on a real full disk
            with open("/dev/full", "wb") as full:
                full.write(data)
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_to_a_full_disk)
    assert main(["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "ingest"]) == 2
    err = without_progress(capsys.readouterr().err)
    assert len(err.splitlines()) == 1, err
    assert re.match(
        rf"lymphaug ingest: error: no space left on device writing {tmp_path}/data/raw/"
        r"(CLL|FL|MCL)/\d\.png \(\d+\.\d [KMGT]iB free there\)",
        err,
    ), err
    assert not list((tmp_path / "data").iterdir())  # no .raw.*.tmp, no data/raw


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"source": "folder", "folder": "no/such/folder"}, "ingest.folder = 'no/such/folder'"),
        ({"source": "mat", "mat": {"path": "no/such.mat"}}, "ingest.mat.path = 'no/such.mat'"),
    ],
)
def test_a_missing_input_names_its_key(tmp_path, cfg, key):
    with pytest.raises(DataError, match=re.escape(key) + ": no (folder|file) at .*params.yaml"):
        run_ingest(tmp_path, **cfg)
