"""Karras-sigma references for tessera's scheduler parity tests (diffusers 0.42.1, CPU, f32).

Writes tests/fixtures/reference/sched_{euler,euler_a,dpmpp}_karras.safetensors (schedule and
ten steps on stored inputs, same keys as sched_*) and e_txt2img_dpmpp_karras.safetensors
(a 10-step txt2img on tiny-sd, same keys as e_txt2img_*).

diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas: the euler_a reference is
that scheduler with its sigmas and timesteps replaced by EulerDiscreteScheduler's Karras ones
(what A1111's "Euler a Karras" is: the ancestral step on Karras sigmas).

Run from the repository root: /work/pyenv/bin/python tools/gen_karras_fixtures.py
"""
import json
import math
import torch
from safetensors.torch import load_file, save_file
from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, StableDiffusionPipeline)

REF = "tests/fixtures/reference"
MODEL = "models/tiny-sd"
STEPS = 10
base_cfg = json.load(open(f"{MODEL}/scheduler/scheduler_config.json"))
inputs = load_file(f"{REF}/sched_euler.safetensors")


def config_json(cfg):
    """The config as JSON; non-finite floats as strings ("-inf"), as the other fixtures store them."""
    def clean(v):
        return str(v) if isinstance(v, float) and not math.isfinite(v) else v
    return json.dumps({k: clean(v) for k, v in dict(cfg).items()})


def karras(cls):
    return cls.from_config(base_cfg, use_karras_sigmas=True)


def euler_a_karras():
    s = EulerAncestralDiscreteScheduler.from_config(base_cfg)
    s.set_timesteps(STEPS)
    k = karras(EulerDiscreteScheduler)
    k.set_timesteps(STEPS)
    s.sigmas, s.timesteps = k.sigmas.clone(), k.timesteps.clone()
    return s, k.config


def sched_case(name, sched, cfg):
    x = inputs["sample_0"].clone()
    outs = inputs["model_outputs"]
    gen = torch.Generator().manual_seed(77)
    scaled, prevs, noises = [], [], []
    timesteps = sched.timesteps.clone()
    sigmas = sched.sigmas.clone()
    init_sigma = float(sched.init_noise_sigma)
    for i, t in enumerate(timesteps):
        scaled.append(sched.scale_model_input(x, t))
        if isinstance(sched, EulerAncestralDiscreteScheduler):
            state = gen.get_state()
            noises.append(torch.randn(x.shape, generator=gen, dtype=x.dtype))
            gen.set_state(state)
            x = sched.step(outs[i], t, x, generator=gen).prev_sample
        else:
            x = sched.step(outs[i], t, x).prev_sample
        prevs.append(x)
    tensors = {
        "timesteps": timesteps.to(torch.float32),
        "sigmas": sigmas,
        "init_noise_sigma": torch.tensor(init_sigma, dtype=torch.float32),
        "sample_0": inputs["sample_0"],
        "model_outputs": outs,
        "scaled_inputs": torch.stack(scaled),
        "prev_samples": torch.stack(prevs),
    }
    if noises:
        tensors["step_noises"] = torch.stack(noises)
    meta = {
        "doc": f"{name}: from_config(tiny-sd scheduler_config, use_karras_sigmas=True); "
               f"set_timesteps({STEPS}); x=sample_0 (from sched_euler); for i,t: "
               "scaled_inputs[i]=scale_model_input(x,t); x=step(model_outputs[i],t,x).prev_sample; "
               "prev_samples[i]=x. sigmas = scheduler.sigmas after set_timesteps."
               + (" euler_a: EulerAncestral with Euler's Karras sigmas/timesteps swapped in; "
                  "step_noises[i] is the noise step i drew." if noises else ""),
        "scheduler_config": config_json(cfg),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{REF}/{name}.safetensors", meta)
    print(name, "timesteps", timesteps.tolist())
    print(name, "sigmas", sigmas.tolist())


for name, cls in [("sched_euler_karras", EulerDiscreteScheduler),
                  ("sched_dpmpp_karras", DPMSolverMultistepScheduler)]:
    s = karras(cls)
    s.set_timesteps(STEPS)
    sched_case(name, s, s.config)
s, cfg = euler_a_karras()
sched_case("sched_euler_a_karras", s, cfg)

# A short txt2img with DPM++ 2M Karras: the stepping inside the pipeline, not only the schedule.
pipe = StableDiffusionPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, safety_checker=None,
                                               requires_safety_checker=False)
pipe.scheduler = karras(DPMSolverMultistepScheduler)
pipe.set_progress_bar_config(disable=True)
ref = load_file(f"{REF}/e_txt2img_dpmpp.safetensors")
init = ref["init_latents"]
steps_lat = []


def on_step(p, i, t, kw):
    steps_lat.append(kw["latents"].clone())
    return kw


with torch.no_grad():
    emb, neg = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, negative_prompt="")
    final = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, height=128, width=128,
                 num_inference_steps=STEPS, guidance_scale=7.5, latents=init.clone(),
                 output_type="latent", callback_on_step_end=on_step).images
    decoded = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
save_file({
    "prompt_embeds": torch.cat([neg, emb]).contiguous(),
    "init_latents": init.contiguous(),
    "timesteps": pipe.scheduler.timesteps.to(torch.float32).contiguous(),
    "step_latents": torch.stack(steps_lat).contiguous(),
    "final_latents": final.contiguous(),
    "vae_decoded": decoded.contiguous(),
}, f"{REF}/e_txt2img_dpmpp_karras.safetensors", {
    "doc": "StableDiffusionPipeline(tiny-sd, scheduler=DPMSolverMultistepScheduler.from_config(..., "
           "use_karras_sigmas=True))(prompt_embeds, negative_prompt_embeds ('' encoded), 128x128, 10 steps, "
           "guidance 7.5, latents=init_latents (from e_txt2img_dpmpp), output_type='latent') -> final_latents; "
           "step_latents[i] = latents after step i; vae_decoded = vae.decode(final/0.18215).sample.",
    "scheduler_config": config_json(pipe.scheduler.config),
})
print("txt2img timesteps", pipe.scheduler.timesteps.tolist())
