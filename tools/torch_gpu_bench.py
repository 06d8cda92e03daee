"""PyTorch + diffusers on a CUDA GPU, the anchors tessera's GPU figures are compared with, on
the same model folder (a `tessera model synth` output): one UNet CFG step (batch 2) at 512²,
VAE decodes of 512² and 2048² (one piece, and diffusers' `enable_tiling()`), in fp16.
Prints `<name> <seconds> <peak allocated MiB>` per line. Used by tools/gpu-check.sh."""
import argparse
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--repeat", type=int, default=5)
p.add_argument("--what", default="unet-512,vae-512,vae-2048,vae-2048-tiled")
a = p.parse_args()
dev, dtype = "cuda", torch.float16
torch.manual_seed(0)


def timed(f, repeat):
    f()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), torch.cuda.max_memory_allocated() / 2**20


with torch.inference_mode():
    for what in a.what.split(","):
        if what.startswith("unet"):
            side = int(what.split("-")[1]) // 8
            unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet", torch_dtype=dtype).to(dev)
            x = torch.randn(2, 4, side, side, dtype=dtype, device=dev)
            ctx = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dtype, device=dev)
            s, peak = timed(lambda: unet(x, 500, encoder_hidden_states=ctx), a.repeat)
            del unet
        else:
            side = int(what.split("-")[1]) // 8
            vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae", torch_dtype=dtype).to(dev)
            if what.endswith("tiled"):
                vae.enable_tiling()
            z = torch.randn(1, 4, side, side, dtype=dtype, device=dev)
            s, peak = timed(lambda: vae.decode(z), 1 if side > 64 else a.repeat)
            del vae
        torch.cuda.empty_cache()
        print(f"torch-{what} {s:.4f} {peak:.0f}", flush=True)
