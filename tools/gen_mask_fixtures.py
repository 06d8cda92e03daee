"""Reference fixtures for Mixture-of-Diffusers canvases with quartic and constant region masks.

Written for tessera (not copied from anywhere): the loop of diffusers' community
`mixture_canvas.py` (StableDiffusionCanvasPipeline) spelled out explicitly, with its three mask
builders as that file defines them:
  gaussian  W = outer(g(h,(h-1)/2), g(w,(w-1)/2)) * mask_weight              (float64, numpy)
  quartic   s_i = i/(n-1) * 1.99 - 0.995;  p_i = 15/16 * (1 - s_i^2)^2;
            W = outer(p_rows, p_cols) * mask_weight                          (float64, numpy)
  constant  W = ones(h, w) * mask_weight                                     (float32, torch)
The f64 masks make `eps * W` a float64 product that is stored into float32 buffers; the constant
mask's product is float32 throughout, as in the upstream pipeline.

Usage: python tools/gen_mask_fixtures.py MODEL_DIR OUT.safetensors
(tiny-sd, diffusers 0.42.1, torch 2.15, CPU, float32.)
"""
import json
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

MODEL, OUT = sys.argv[1], sys.argv[2]
H, W, SEED, STEPS = 256, 384, 5, 10
# (pixel rect [x, y, w, h], prompt, guidance, mask, mask_weight)
REGIONS = [
    ([0, 0, 256, 256], "a red castle on a hill, oil painting", 7.5, "quartic", 1.0),
    ([128, 0, 256, 256], "a blue lake with snowy mountains", 5.0, "constant", 0.8),
    ([64, 128, 320, 128], "a field of sunflowers", 6.0, "quartic", 1.3),
]


def gaussian(n):
    var, mid = 0.01, (n - 1) / 2
    return np.array([np.exp(-(i - mid) ** 2 / (n * n) / (2 * var)) / np.sqrt(2 * np.pi * var) for i in range(n)])


def quartic(n):
    support = np.arange(n) / (n - 1) * 1.99 - (1.99 / 2.0)
    return 15.0 / 16.0 * np.square(1 - np.square(support))


def weights(h, w, mask, weight):
    if mask == "constant":
        return torch.ones(h, w) * weight
    f = {"gaussian": gaussian, "quartic": quartic}[mask]
    return torch.tensor(np.outer(f(h), f(w)) * weight)


tok = CLIPTokenizer.from_pretrained(MODEL, subfolder="tokenizer")
te = CLIPTextModel.from_pretrained(MODEL, subfolder="text_encoder").eval()
unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet").eval()
sched = DDIMScheduler.from_pretrained(MODEL, subfolder="scheduler")
sched.set_timesteps(STEPS)


def encode(text):
    ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return te(ids)[0]


out = {}
regions = []
with torch.no_grad():
    uncond = encode("")
    for k, (rect, prompt, g, mask, mw) in enumerate(REGIONS):
        x, y, w, h = rect
        box = (y // 8, (y + h) // 8, x // 8, (x + w) // 8)
        emb = torch.cat([uncond, encode(prompt)])
        wts = weights(box[1] - box[0], box[3] - box[2], mask, mw)
        regions.append((box, emb, g, wts))
        out[f"t2i.{k}.latent_coords"] = torch.tensor(box, dtype=torch.int64)
        out[f"t2i.{k}.prompt_embeds"] = emb.contiguous()
        out[f"t2i.{k}.weights"] = wts.clone()
    gen = torch.Generator("cpu").manual_seed(SEED)
    init_noise = torch.randn((1, 4, H // 8, W // 8), generator=gen)
    x = init_noise * sched.init_noise_sigma
    steps = []
    for t in sched.timesteps:
        n = torch.zeros_like(x)
        d = torch.zeros_like(x)
        for (r0, r1, c0, c1), emb, g, wts in regions:
            xk = x[:, :, r0:r1, c0:c1]
            o = unet(sched.scale_model_input(torch.cat([xk, xk]), t), t, encoder_hidden_states=emb).sample
            u, c = o.chunk(2)
            e = u + g * (c - u)
            n[:, :, r0:r1, c0:c1] += e * wts
            d[:, :, r0:r1, c0:c1] += wts
        eps = torch.nan_to_num(n / d)
        x = sched.step(eps, t, x).prev_sample
        steps.append(x.clone())
out["init_noise"] = init_noise
out["timesteps"] = sched.timesteps.clone()
out["step_latents"] = torch.stack([s[0] for s in steps]).unsqueeze(1).contiguous()
out["final_latents"] = x.contiguous()
meta = {
    "doc": __doc__.strip().splitlines()[0],
    "canvas_px": json.dumps([H, W]),
    "seed": str(SEED),
    "regions": json.dumps([{"rect": r, "prompt": p, "guidance": g, "mask": m, "mask_weight": mw} for r, p, g, m, mw in REGIONS]),
}
save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata=meta)
print("wrote", OUT, {k: tuple(v.shape) for k, v in out.items()})
