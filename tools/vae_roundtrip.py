"""Round-trip held-out synthetic pictures through a model's VAE at several sizes.

Shows whether a trained tiny VAE carries from its training size to the tile sizes tessera
decodes (see train_tiny.py). Not part of the crate's build.

    /path/to/venv/bin/python tools/vae_roundtrip.py /work/models/tiny-poster
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

sys.path.insert(0, str(Path(__file__).parent))
from train_tiny import batch  # noqa: E402

torch.set_num_threads(1)
vae = AutoencoderKL.from_pretrained(Path(sys.argv[1]) / "vae").eval()
g = torch.Generator().manual_seed(123)  # not the training seed
for size in [64, 128, 256]:
    x = batch(g, 4, size)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    psnr = 10 * math.log10(4 / F.mse_loss(rec, x).item())
    mean_err = (rec.mean((2, 3)) - x.mean((2, 3))).abs().mean().item()
    print(f"{size:4} px: PSNR {psnr:.1f} dB, mean-colour error {mean_err:.3f} (range [-1, 1])")
