import math

import numpy as np
import pytest

from sdcpu.bench import fidelity


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_identical_images_are_infinite_psnr_and_unit_ssim(image):
    assert math.isinf(fidelity.psnr(image, image.copy()))
    assert fidelity.ssim(image, image.copy()) == pytest.approx(1.0)


def test_drift_lowers_both_and_more_drift_lowers_them_more(image):
    rng = np.random.default_rng(1)
    slight = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(image + rng.normal(0, 40, image.shape), 0, 255).astype(np.uint8)
    assert 35 < fidelity.psnr(slight, image) < 50  # sigma 2 of 255: about 42 dB
    assert fidelity.psnr(heavy, image) < fidelity.psnr(slight, image)
    assert fidelity.ssim(heavy, image) < fidelity.ssim(slight, image) < 1.0


def test_psnr_matches_its_definition():
    a = np.zeros((16, 16), dtype=np.uint8)
    b = np.full((16, 16), 10, dtype=np.uint8)  # MSE 100
    assert fidelity.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


def test_size_mismatch_and_tiny_images_are_refused(image):
    with pytest.raises(ValueError, match="differ in size"):
        fidelity.psnr(image, image[:40])
    with pytest.raises(ValueError, match="smaller than"):
        fidelity.ssim(image[:8, :8], image[:8, :8])
