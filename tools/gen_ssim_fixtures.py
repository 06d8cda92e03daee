#!/usr/bin/env python3
"""Generate the SSIM/PSNR fixtures of tests/check.rs (not part of the build).

Writes three deterministic 64x48 RGB image pairs as PNG to tests/fixtures/ssim/ and
expected.json with scikit-image's numbers for each pair:

- ssim: structural_similarity on luma Y = 0.299 R + 0.587 G + 0.114 B (float64, unrounded),
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255;
- psnr: peak_signal_noise_ratio on the RGB arrays, data_range=255.

Usage:  pip install scikit-image   then   python3 tools/gen_ssim_fixtures.py
"""

import io
import json
import pathlib

import numpy as np
import PIL
import skimage
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

W, H = 64, 48
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ssim"


def box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur with edge replication, rounded back to uint8."""
    f = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    acc = sum(f[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
    return np.clip(np.rint(acc / 9.0), 0, 255).astype(np.uint8)


def noise_pair():
    rng = np.random.default_rng(1234)
    a = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return a, box_blur(a)


def gradient_pair():
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    a = np.stack([x * 4.0, y * 5.0, 255.0 - (x + y) * 2.2], axis=-1)
    # The same gradient moved 3 px right and 2 px down, slightly brighter.
    b = np.stack([(x - 3) * 4.0, (y - 2) * 5.0, 255.0 - (x + y - 5) * 2.2], axis=-1) + 6.0
    to8 = lambda v: np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return to8(a), to8(b)


def picture_pair():
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    sky = np.stack([90 + y * 2, 140 + y * 1.5, 230 - y], axis=-1)
    sun = ((x - 44) ** 2 + (y - 14) ** 2) < 81
    hill = y > 30 + 6 * np.sin(x / 7.0)
    stripes = (np.sin(x / 1.7 + y / 3.1) > 0.3) & hill
    img = sky
    img[sun] = [250, 210, 60]
    img[hill] = np.stack([40 + 0 * x, 120 + y, 50 + 0 * x], axis=-1)[hill]
    img[stripes] = [30, 80, 35]
    a = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # "JPEG-ish": a real JPEG round trip at low quality, stored losslessly as PNG.
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=20)
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return a, b


def luma(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, make in [
        ("noise", noise_pair),
        ("gradient", gradient_pair),
        ("picture", picture_pair),
    ]:
        a, b = make()
        fa, fb = f"{name}_a.png", f"{name}_b.png"
        Image.fromarray(a).save(OUT / fa)
        Image.fromarray(b).save(OUT / fb)
        # Re-read what was stored, so the numbers describe the files exactly.
        a = np.asarray(Image.open(OUT / fa).convert("RGB"))
        b = np.asarray(Image.open(OUT / fb).convert("RGB"))
        ssim = structural_similarity(
            luma(a),
            luma(b),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        )
        psnr = peak_signal_noise_ratio(a, b, data_range=255)
        pairs.append({"name": name, "a": fa, "b": fb, "ssim": float(ssim), "psnr": float(psnr)})
        print(f"{name:9s} ssim {ssim:.6f} psnr {psnr:.4f} dB")
    meta = {
        "generator": "tools/gen_ssim_fixtures.py",
        "scikit_image": skimage.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "ssim": "structural_similarity(luma(a), luma(b), gaussian_weights=True, sigma=1.5, "
        "use_sample_covariance=False, data_range=255); luma = 0.299 R + 0.587 G + 0.114 B",
        "psnr": "peak_signal_noise_ratio(a_rgb, b_rgb, data_range=255)",
        "pairs": pairs,
    }
    (OUT / "expected.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
