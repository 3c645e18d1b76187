"""How far an image drifts from a reference image of the same seed: PSNR and SSIM, in NumPy.

SSIM follows Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering), computed on
each colour channel and averaged; images are compared as 8-bit RGB, which is what a user sees and saves.
"""

import math

import numpy as np

_WINDOW, _SIGMA = 11, 1.5


def psnr(image, reference) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images; infinite when they are identical."""
    a, b = _pixels(image, reference)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(image, reference) -> float:
    """Mean structural similarity of two uint8 images: 1.0 when identical, lower as structure differs."""
    a, b = _pixels(image, reference)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a**2
    var_b = _blur(b * b) - mu_b**2
    cov = _blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def _pixels(image, reference) -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.asarray(x, dtype=np.float64) for x in (image, reference))
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < _WINDOW:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[0]} are smaller than the {_WINDOW}-pixel SSIM window")
    return (a, b) if a.ndim == 3 else (a[..., None], b[..., None])


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over height and width, 'valid' region only."""
    taps = np.exp(-0.5 * ((np.arange(_WINDOW) - _WINDOW // 2) / _SIGMA) ** 2)
    taps /= taps.sum()
    height, width = x.shape[0] - _WINDOW + 1, x.shape[1] - _WINDOW + 1
    rows = sum(w * x[k : k + height] for k, w in enumerate(taps))
    return sum(w * rows[:, k : k + width] for k, w in enumerate(taps))
