"""Write models/tiny-sdxl as an SDXL single-file checkpoint in the original SGM/LDM layout of the
released SDXL files, then prove it right with diffusers itself.

    /work/pyenv/bin/python tools/make_sdxl_single.py [MODEL_DIR] [OUT_FILE]

Layout (as `sd_xl_base_1.0.safetensors`):
  model.diffusion_model.*                 UNet (input/middle/output_blocks, label_emb for text_time)
  first_stage_model.*                     VAE (encoder.down.i.block.j, decoder.up numbered bottom-up,
                                          mid attention projections as 1x1 convolutions)
  conditioner.embedders.0.transformer.*   CLIP-L in the Hugging Face layout (text_model.*)
  conditioner.embedders.1.model.*         OpenCLIP-bigG (resblocks, in_proj_weight = q;k;v,
                                          ln_final, positional_embedding, text_projection = P^T)

The map below is written here from the LDM naming; it is not diffusers' conversion script. The
proof is diffusers' own loader: `StableDiffusionXLPipeline.from_single_file(file, config=MODEL_DIR)`
must give every tensor of the folder's pipeline, bit for bit.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models/tiny-sdxl"
OUT = REPO / "tests/fixtures/single-sdxl/tiny-sdxl.safetensors"


def swap(name, table):
    for d, l in table:
        if name.startswith(d):
            return l + name[len(d):]
    return name


UNET_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
               ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]


def unet_key(name, cfg):
    lpb = cfg["layers_per_block"]
    per = lpb + 1
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    p = name.split(".")
    top = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
           ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
           ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for d, l in top:
        if name.startswith(d):
            return l + name[len(d):]
    if p[0] == "down_blocks":
        i = int(p[1])
        if p[2] == "resnets":
            return f"input_blocks.{1 + i * per + int(p[3])}.0." + swap(".".join(p[4:]), UNET_RESNET)
        if p[2] == "attentions":
            return f"input_blocks.{1 + i * per + int(p[3])}.1." + ".".join(p[4:])
        assert p[2:5] == ["downsamplers", "0", "conv"], name
        return f"input_blocks.{(i + 1) * per}.0.op." + ".".join(p[5:])
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return f"middle_block.{2 * int(p[2])}." + swap(".".join(p[3:]), UNET_RESNET)
        assert p[1:3] == ["attentions", "0"], name
        return "middle_block.1." + ".".join(p[3:])
    assert p[0] == "up_blocks", name
    i = int(p[1])
    if p[2] == "resnets":
        return f"output_blocks.{i * per + int(p[3])}.0." + swap(".".join(p[4:]), UNET_RESNET)
    if p[2] == "attentions":
        return f"output_blocks.{i * per + int(p[3])}.1." + ".".join(p[4:])
    assert p[2:5] == ["upsamplers", "0", "conv"], name
    return f"output_blocks.{i * per + lpb}.{2 if up_attn[i] else 1}.conv." + ".".join(p[5:])


# Older diffusers folders (and tessera's synthetic models) name the VAE's attention query/key/
# value/proj_attn; both namings have one LDM form.
VAE_MID_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                ("to_out.0.", "proj_out."), ("query.", "q."), ("key.", "k."), ("value.", "v."),
                ("proj_attn.", "proj_out.")]


def vae_key(name, levels):
    """(LDM key, whether the linear weight becomes a 1x1 convolution)."""
    p = name.split(".")
    if p[0] not in ("encoder", "decoder"):
        return name, False
    side, rest = p[0], p[1:]

    def resnet(t):
        return "nin_shortcut." + t[len("conv_shortcut."):] if t.startswith("conv_shortcut.") else t

    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        level, kind = (i, "down") if side == "encoder" else (levels - 1 - i, "up")
        if rest[2] == "resnets":
            return f"{side}.{kind}.{level}.block.{rest[3]}." + resnet(".".join(rest[4:])), False
        sampler = "downsample" if kind == "down" else "upsample"
        return f"{side}.{kind}.{level}.{sampler}.conv." + ".".join(rest[5:]), False
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}." + resnet(".".join(rest[3:])), False
        t = ".".join(rest[3:])
        key = f"{side}.mid.attn_1." + swap(t, VAE_MID_ATTN)
        return key, t.endswith("weight") and not t.startswith("group_norm.")
    return f"{side}." + swap(".".join(rest), [("conv_norm_out.", "norm_out.")]), False


OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def open_clip(sd, prefix):
    out = {}
    for name, t in sd.items():
        if name == "text_projection.weight":
            out[prefix + "text_projection"] = t.t().contiguous()
            continue
        n = name[len("text_model."):]
        if n == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = t
        elif n == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = t
        elif n.startswith("final_layer_norm."):
            out[prefix + "ln_final." + n[len("final_layer_norm."):]] = t
        elif n.startswith("encoder.layers."):
            i, t_name = n[len("encoder.layers."):].split(".", 1)
            block = f"{prefix}transformer.resblocks.{i}."
            if t_name.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                if t_name.startswith("self_attn.q_proj."):
                    kind = t_name.rsplit(".", 1)[1]
                    qkv = [sd[f"text_model.encoder.layers.{i}.self_attn.{x}_proj.{kind}"] for x in "qkv"]
                    out[f"{block}attn.in_proj_{kind}"] = torch.cat(qkv, 0)
            else:
                mapped = swap(t_name, OPEN_CLIP_LAYER)
                assert mapped != t_name, name
                out[block + mapped] = t
        else:
            raise ValueError(f"unmapped text_encoder_2 tensor {name}")
    return out


def convert():
    unet_cfg = json.loads((MODEL / "unet/config.json").read_text())
    vae_cfg = json.loads((MODEL / "vae/config.json").read_text())
    levels = len(vae_cfg["block_out_channels"])
    ckpt = {}
    for name, t in load_file(MODEL / "unet/diffusion_pytorch_model.safetensors").items():
        ckpt["model.diffusion_model." + unet_key(name, unet_cfg)] = t
    for name, t in load_file(MODEL / "vae/diffusion_pytorch_model.safetensors").items():
        key, conv = vae_key(name, levels)
        ckpt["first_stage_model." + key] = t[:, :, None, None].contiguous() if conv else t
    for name, t in load_file(MODEL / "text_encoder/model.safetensors").items():
        ckpt["conditioner.embedders.0.transformer." + name] = t
    ckpt.update(open_clip(load_file(MODEL / "text_encoder_2/model.safetensors"), "conditioner.embedders.1.model."))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(ckpt, OUT, metadata={"format": "pt", "made_by": "tools/make_sdxl_single.py from models/tiny-sdxl"})
    print(f"wrote {OUT} ({len(ckpt)} tensors, {OUT.stat().st_size / 1e6:.1f} MB)")


def same(part, a, b):
    assert a.keys() == b.keys(), (part, sorted(set(a) ^ set(b))[:10])
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, (part, bad[:10])
    print(f"{part}: {len(a)} tensors equal to the folder's")
    return len(a)


def verify():
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    kw = dict(torch_dtype=torch.float32, local_files_only=True)
    folder = StableDiffusionXLPipeline.from_pretrained(MODEL, **kw)
    single = StableDiffusionXLPipeline.from_single_file(str(OUT), config=str(MODEL), **kw)
    total = sum(same(p, getattr(folder, p).state_dict(), getattr(single, p).state_dict())
                for p in ["unet", "vae", "text_encoder"])
    # text_encoder_2: diffusers picks the CLIP-L branch for it whenever the CLIP-L width equals
    # the second encoder's (a test of `position_embedding.shape[-1]`), which only a tiny model
    # meets (real SDXL: 768 vs 1280). Say so when it happens, and prove the OpenCLIP tensors with
    # the very function from_single_file calls for them in real SDXL files.
    te1 = folder.text_encoder.state_dict()
    te2 = single.text_encoder_2.state_dict()
    want = {k: v for k, v in folder.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
    if all(torch.equal(te2[k], want[k]) for k in want):
        same("text_encoder_2", want, te2)
    else:
        # (transformers 5 flattens CLIPTextModel's names; CLIPTextModelWithProjection keeps text_model.)
        assert all(torch.equal(te2["text_model." + k], te1[k]) for k in te1), "text_encoder_2 differs"
        print("text_encoder_2 from from_single_file: CLIP-L's tensors (diffusers' width test, see comment)")
    ckpt = load_file(OUT)
    converted = convert_open_clip_checkpoint(folder.text_encoder_2, ckpt, prefix="conditioner.embedders.1.model.")
    total += same("text_encoder_2 (convert_open_clip_checkpoint)", want, converted)
    print(f"diffusers reads the single file as the folder: {total} tensors bit-identical")


if __name__ == "__main__":
    MODEL = Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL
    OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else OUT
    convert()
    verify()
