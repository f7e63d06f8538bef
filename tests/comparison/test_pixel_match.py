"""The pixel-space copy check: FFT matching equals the definition, and it finds what it should."""

from __future__ import annotations

import numpy as np
import pytest

from lymphaug.common.errors import DataError
from lymphaug.common.images import save_png
from lymphaug.comparison.pixel_match import FLAT_STD, best_ncc, centre_patch, grey, measure


def brute_force_ncc(patch: np.ndarray, images: list[np.ndarray]) -> float:
    """The definition: Pearson correlation of the patch, or of one of its flips, with every
    window (0 for a window flatter than FLAT_STD), the highest."""
    size = patch.shape[0]
    best = -1.0
    for variant in (patch, patch[:, ::-1], patch[::-1, :], patch[::-1, ::-1]):
        for image in images:
            for top in range(image.shape[0] - size + 1):
                for left in range(image.shape[1] - size + 1):
                    window = image[top : top + size, left : left + size]
                    if window.std() < FLAT_STD:
                        best = max(best, 0.0)
                        continue
                    r = np.corrcoef(variant.ravel(), window.ravel())[0, 1]
                    best = max(best, float(r))
    return best


def test_fft_matching_equals_the_definition_over_images_of_two_shapes():
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (12, 10)) for _ in range(3)] + [rng.uniform(0, 255, (9, 11))]
    patches = [rng.uniform(0, 255, (4, 4)) for _ in range(5)]
    expected = [brute_force_ncc(patch, images) for patch in patches]
    assert best_ncc(patches, images) == pytest.approx(expected, abs=1e-5)


def test_flat_background_does_not_inflate_the_score():
    """Training images with a flat block of an awkward grey value (rounding in the window
    sums leaves such windows a tiny spread): scores stay the definition's, at most 1."""
    rng = np.random.default_rng(4)
    images = [rng.uniform(0, 255, (40, 50)) for _ in range(3)]
    for image in images:
        image[5:30, 10:40] = 40.98
    patches = [rng.uniform(0, 255, (16, 16)) for _ in range(3)] + [images[0][2:18, 3:19]]
    expected = [brute_force_ncc(patch, images) for patch in patches]
    assert best_ncc(patches, images) == pytest.approx(expected, abs=1e-5)
    assert expected[3] == pytest.approx(1.0) and max(expected[:3]) < 0.5


def test_a_shifted_relit_flipped_crop_is_a_copy_and_noise_is_not():
    rng = np.random.default_rng(1)
    training = [rng.uniform(0, 255, (60, 80)) for _ in range(4)]
    crop = training[2][13:45, 30:62] * 0.6 + 40  # another place, darker, less contrast
    noise = rng.uniform(0, 255, (32, 32))
    scores = best_ncc([crop, crop[::-1, :], crop[::-1, ::-1], noise], training)
    assert scores[:3] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert scores[3] < 0.5


def test_no_training_images_is_a_clear_error(tmp_path):
    save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "syn.png")
    with pytest.raises(DataError, match="no training images"):
        measure(synthetic=[tmp_path / "syn.png"], training=[], held_out=[], scale=1.0)


def test_flat_patches_and_flat_images_score_zero_not_nan():
    flat_image, flat_patch = np.full((20, 20), 128.0), np.full((8, 8), 7.0)
    textured = np.random.default_rng(2).uniform(0, 255, (8, 8))
    assert best_ncc([flat_patch, textured], [flat_image]).tolist() == [0.0, 0.0]


def test_measure_flags_a_copied_training_image_beside_held_out_real_images(tmp_path):
    """Real files: one synthetic image is a training image saved again, flipped upside down;
    the other a flat grey picture (nothing to correlate: 0, below every held-out score)."""
    rng = np.random.default_rng(3)

    def picture(name: str) -> np.ndarray:
        image = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
        save_png(image, tmp_path / f"{name}.png")
        return image

    train = [picture(f"train_{i}") for i in range(3)]
    for i in range(2):
        picture(f"held_{i}")
    save_png(np.full((96, 120, 3), 120, np.uint8), tmp_path / "new.png")
    save_png(train[1][::-1], tmp_path / "copy.png")

    def files(*names: str) -> list:
        return [tmp_path / f"{name}.png" for name in names]

    pixels = measure(
        synthetic=files("copy", "new"),
        training=files("train_0", "train_1", "train_2"),
        held_out=files("held_0", "held_1"),
        scale=0.5,
    )
    assert pixels.patch == 48  # the shortest side at x0.5: 96 px -> 48
    assert pixels.synthetic[0] == pytest.approx(1.0, abs=1e-4)
    assert pixels.synthetic[1] == 0.0 and 0.0 < pixels.held_out.max() < 0.5
    assert pixels.copies == 1 and pixels.above_held_out == 1


def test_grey_is_luma_at_the_classifiers_scale():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    out = grey(rgb, 0.5)
    assert out.shape == (5, 10)
    assert out == pytest.approx(np.full((5, 10), 0.299 * 100 + 0.587 * 200 + 0.114 * 50), abs=0.6)
    assert centre_patch(np.arange(100.0).reshape(10, 10), 4)[0, 0] == 33.0
