"""PyTorch + diffusers timings of the same work `tessera bench` measures, on the same model
folder: one UNet CFG step (batch 2) and one VAE decode. Prints one line per figure:
`<name> <seconds per run> <peak RSS MiB>`. Used by tools/bench-vs-torch.sh."""
import argparse
import resource
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--latent", type=int, default=64)
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--what", default="unet-f32,unet-bf16,vae-f32")
a = p.parse_args()
torch.manual_seed(0)


def timed(f, repeat):
    f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


with torch.inference_mode():
    for what in a.what.split(","):
        if what.startswith("unet"):
            dtype = torch.bfloat16 if what.endswith("bf16") else torch.float32
            unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet", torch_dtype=dtype).eval()
            x = torch.randn(2, 4, a.latent, a.latent, dtype=dtype)
            ctx = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dtype)
            t = torch.tensor(500)
            s = timed(lambda: unet(x, t, encoder_hidden_states=ctx), a.repeat)
            print(f"{what} {s:.3f} {rss_mib():.0f}", flush=True)
            del unet
        elif what == "vae-f32":
            vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae").eval()
            z = torch.randn(1, 4, a.latent, a.latent)
            s = timed(lambda: vae.decode(z), a.repeat)
            print(f"{what} {s:.3f} {rss_mib():.0f}", flush=True)
            del vae
