"""A rank-4 LoRA (alpha 2) for models/tiny-sdxl in both formats SDXL LoRAs come in, and
diffusers references for it.

    /work/pyenv/bin/python tools/make_sdxl_lora.py      # needs peft (pip install peft)

Formats (written to tests/fixtures/lora-sdxl/):
  tiny_sdxl_lora_kohya.safetensors  kohya/A1111 SDXL: UNet modules in the LDM layout
      (lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q), text encoders lora_te1_ /
      lora_te2_ (text_model_encoder_layers_0_self_attn_q_proj); lora_down / lora_up / .alpha
  tiny_sdxl_lora_peft.safetensors   diffusers/PEFT: unet.<diffusers path>, text_encoder.…,
      text_encoder_2.… with lora_A / lora_B; alpha only in the `lora_adapter_metadata` JSON
References (lora_sdxl.safetensors), all from `pipe.load_lora_weights(file)` of diffusers:
  the UNet at t=500 with SDXL's added conditioning, scales 1.0 and 0.6
  (cross_attention_kwargs={"scale": s}); both text encoders through `encode_prompt(lora_scale=s)`
  (prompt and pooled embeddings), scales 1.0 and 0.6. The PEFT file must give the same outputs
  as the kohya file, and both the outputs of the weights merged by hand (W + s·alpha/rank·up·down),
  so a module diffusers failed to map cannot pass unnoticed.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sdxl_single import unet_key  # noqa: E402  (the LDM names of the released SDXL files)

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models/tiny-sdxl"
OUT = REPO / "tests/fixtures/lora-sdxl"
RANK, ALPHA = 4, 2.0
PROMPTS = ["a photo of a cat", "a red sailing boat on a calm lake"]
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def pipeline():
    from diffusers import StableDiffusionXLPipeline
    return StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, local_files_only=True)


def modules(pipe):
    """(component, module path as the checkpoint names it, Linear) of every target."""
    out = []
    for name, m in pipe.unet.named_modules():
        if name.endswith(UNET_TARGETS):
            out.append(("unet", name, m))
    for comp in ("text_encoder", "text_encoder_2"):
        for name, m in getattr(pipe, comp).named_modules():
            if name.endswith(TE_TARGETS):
                # transformers 5 flattens CLIPTextModel; checkpoints and LoRAs keep text_model.
                path = name if name.startswith("text_model.") else "text_model." + name
                out.append((comp, path, m))
    return out


def make_lora(pipe):
    g = torch.Generator().manual_seed(4343)
    lora = {}
    for comp, path, m in modules(pipe):
        down = torch.randn(RANK, m.in_features, generator=g) / m.in_features ** 0.5
        up = torch.randn(m.out_features, RANK, generator=g) / RANK ** 0.5
        lora[(comp, path)] = (down, up)
    return lora


def write(pipe, lora):
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = pipe.unet.config
    kohya, peft = {}, {}
    kohya_prefix = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    for (comp, path), (down, up) in lora.items():
        if comp == "unet":
            ldm = unet_key(path + ".weight", cfg)[: -len(".weight")]
            name = "lora_unet_" + ldm.replace(".", "_")
        else:
            name = kohya_prefix[comp] + path.replace(".", "_")
        kohya[name + ".lora_down.weight"] = down
        kohya[name + ".lora_up.weight"] = up
        kohya[name + ".alpha"] = torch.tensor(ALPHA)
        peft[f"{comp}.{path}.lora_A.weight"] = down
        peft[f"{comp}.{path}.lora_B.weight"] = up
    save_file(kohya, OUT / "tiny_sdxl_lora_kohya.safetensors", metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA),
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_training_comment": "random LoRA for reference fixtures (not trained), tools/make_sdxl_lora.py"})
    meta = {}
    for comp, targets in (("unet", UNET_TARGETS), ("text_encoder", TE_TARGETS), ("text_encoder_2", TE_TARGETS)):
        meta.update({f"{comp}.r": RANK, f"{comp}.lora_alpha": ALPHA, f"{comp}.alpha_pattern": {},
                     f"{comp}.rank_pattern": {}, f"{comp}.use_dora": False, f"{comp}.use_rslora": False,
                     f"{comp}.target_modules": sorted({t.split(".", 1)[1] for t in targets})})
    save_file(peft, OUT / "tiny_sdxl_lora_peft.safetensors",
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    print(f"kohya: {len(kohya)} tensors, peft: {len(peft)} tensors, {len(lora)} modules")


def outputs(pipe, inputs, scale, lora_loaded):
    """UNet output and both prompt embeddings at LoRA scale `scale`."""
    kw = {"cross_attention_kwargs": {"scale": scale}} if lora_loaded else {}
    with torch.no_grad():
        out = pipe.unet(inputs["sample"], torch.tensor(500), encoder_hidden_states=inputs["encoder_hidden_states"],
                        added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]},
                        **kw).sample
        pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False,
                                              lora_scale=scale if lora_loaded else None)
    return {"unet": out, "prompt_embeds": pe, "pooled_prompt_embeds": pooled}


def merged(lora, scale):
    """A fresh pipeline with the LoRA merged into its weights by hand."""
    pipe = pipeline()
    targets = {(c, p): m for c, p, m in modules(pipe)}
    with torch.no_grad():
        for key, (down, up) in lora.items():
            targets[key].weight += (up @ down) * (scale * ALPHA / RANK)
    return pipe


def main():
    base = pipeline()
    lora = make_lora(base)
    write(base, lora)
    g = torch.Generator().manual_seed(501)
    with torch.no_grad():
        pe, _, pooled, _ = base.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    inputs = {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "encoder_hidden_states": pe,
        "text_embeds": pooled,
        "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * 2),
    }
    ref = dict(inputs)
    ref.update({f"base.{k}": v for k, v in outputs(base, inputs, 1.0, False).items()})
    results = {}
    for fmt, file in (("kohya", "tiny_sdxl_lora_kohya.safetensors"), ("peft", "tiny_sdxl_lora_peft.safetensors")):
        pipe = pipeline()
        pipe.load_lora_weights(str(OUT), weight_name=file, adapter_name=fmt)
        results[fmt] = {s: outputs(pipe, inputs, s, True) for s in (1.0, 0.6)}
    checks = {}
    for s in (1.0, 0.6):
        by_hand = outputs(merged(lora, s), inputs, 1.0, False)
        for k in ("unet", "prompt_embeds", "pooled_prompt_embeds"):
            a, b = results["kohya"][s][k], results["peft"][s][k]
            h = by_hand[k]
            checks[f"s{s}.{k}"] = {
                "kohya_vs_peft": (a - b).abs().max().item(),
                "diffusers_vs_merged_by_hand": (a - h).abs().max().item(),
                "lora_effect_max": (a - ref[f"base.{k}"]).abs().max().item(),
                "max_abs_ref": a.abs().max().item(),
            }
            ref[f"lora_s{s}.{k}"] = a
    for k, c in checks.items():
        print(k, c)
        # Formats agree; diffusers applied every module (to float32 rounding of the merge);
        # the LoRA changes the outputs.
        assert c["kohya_vs_peft"] <= 1e-6 * max(1.0, c["max_abs_ref"]), k
        assert c["diffusers_vs_merged_by_hand"] <= 1e-4 * max(1.0, c["max_abs_ref"]), k
        assert c["lora_effect_max"] > 1e-2, k
    doc = ("pipe = StableDiffusionXLPipeline.from_pretrained(models/tiny-sdxl); pipe.load_lora_weights(dir, "
           "weight_name=tiny_sdxl_lora_kohya.safetensors) (the PEFT file gives the same); lora_s{s}.unet = "
           "pipe.unet(sample, 500, encoder_hidden_states, added_cond_kwargs={text_embeds, time_ids}, "
           "cross_attention_kwargs={'scale': s}).sample; lora_s{s}.prompt_embeds / pooled_prompt_embeds = "
           "pipe.encode_prompt(prompts, 'cpu', 1, False, lora_scale=s); base.*: no LoRA. encoder_hidden_states, "
           "text_embeds = base prompt embeddings; sample ~ randn(Generator.manual_seed(501)).")
    save_file({k: v.contiguous() for k, v in ref.items()}, OUT / "lora_sdxl.safetensors",
              metadata={"doc": doc, "prompts": json.dumps(PROMPTS), "rank": str(RANK), "alpha": str(ALPHA),
                        "checks": json.dumps(checks)})
    print("wrote", OUT / "lora_sdxl.safetensors")


if __name__ == "__main__":
    main()
