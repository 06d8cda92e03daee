//! Inference on the full SDXL base architecture: its LDM tensor shapes (tessera's networks
//! built over a shape recorder with SDXL base's configs, named through the LDM key map, which
//! `tessera_nn::ldm` tests against the released SDXL key names) give back configs that ask for
//! exactly the same weights, with SDXL base's heads.
use super::*;
use crate::record::record;
use crate::synth::arch;
use candle_core::Shape;
use std::path::Path;
use tessera_nn::ldm::{Part, SDXL_TEXT2_PREFIX, SDXL_TEXT_PREFIX};
use tessera_nn::{clip, unet, vae};

type Listing = Vec<(String, Shape)>;

fn unet_of(cfg: &unet::UNetConfig) -> Listing {
    record(|vb| Ok(unet::UNet::new(vb, cfg).map(drop)?)).unwrap()
}
fn vae_of(cfg: &vae::VaeConfig) -> Listing {
    record(|vb| Ok(vae::AutoencoderKl::new(vb, cfg).map(drop)?)).unwrap()
}
fn text_of(cfg: &clip::ClipTextConfig) -> Listing {
    record(|vb| Ok(clip::ClipTextModel::new(vb, cfg).map(drop)?)).unwrap()
}
fn text_2_of(cfg: &clip::ClipTextConfig) -> Listing {
    record(|vb| Ok(clip::ClipTextModelWithProjection::new(vb, cfg).map(drop)?)).unwrap()
}

/// The LDM checkpoint's (key, shape) for a network's diffusers listing. (The recorder claims
/// every tensor, so the VAE asks for the legacy attention names too; LDM has one set.)
fn ldm(part: &Part, listing: Listing) -> Vec<(String, Vec<usize>)> {
    let legacy = [".query.", ".key.", ".value.", ".proj_attn."];
    listing
        .into_iter()
        .filter(|(name, _)| !legacy.iter().any(|l| name.contains(l)))
        .map(|(name, shape)| {
            let key = part
                .key(&name)
                .unwrap_or_else(|| panic!("no LDM key for {name}"));
            let mut dims = shape.dims().to_vec();
            if key.third.is_some() {
                dims[0] *= 3;
            }
            if key.transpose {
                dims.reverse();
            }
            (key.name, dims)
        })
        .collect()
}

#[test]
fn sdxl_base_is_inferred_from_its_shapes() {
    let a = arch("sdxl").unwrap();
    let u: unet::UNetConfig = serde_json::from_value(a.unet.clone()).unwrap();
    let v: vae::VaeConfig = serde_json::from_value(a.vae.clone()).unwrap();
    let t: clip::ClipTextConfig = serde_json::from_value(a.text_encoder.clone()).unwrap();
    let t2: clip::ClipTextConfig =
        serde_json::from_value(a.text_encoder_2.clone().unwrap()).unwrap();
    let mut shapes = ldm(
        &Part::Unet {
            layers_per_block: u.layers_per_block,
            up_attention: u
                .up_block_types
                .iter()
                .map(|b| b.contains("CrossAttn"))
                .collect(),
        },
        unet_of(&u),
    );
    shapes.extend(ldm(&Part::Vae { levels: 4 }, vae_of(&v)));
    let te = Part::TextEncoder {
        prefix: SDXL_TEXT_PREFIX.into(),
    };
    shapes.extend(ldm(&te, text_of(&t)));
    let te2 = Part::OpenClip {
        prefix: SDXL_TEXT2_PREFIX.into(),
    };
    shapes.extend(ldm(&te2, text_2_of(&t2)));
    let got = infer_shapes(&Shapes::new(Path::new("sd_xl_base.safetensors"), shapes)).unwrap();
    assert_eq!(got.family, "SDXL");
    assert_eq!(unet_of(&got.unet), unet_of(&u));
    assert_eq!(vae_of(&got.vae), vae_of(&v));
    assert_eq!(text_of(&got.text), text_of(&t));
    let got_t2 = got.text_2.as_ref().unwrap();
    assert_eq!(text_2_of(got_t2), text_2_of(&t2));
    // What the weights alone cannot show.
    for level in 0..3 {
        assert_eq!(
            got.unet.heads(level),
            u.heads(level),
            "heads of level {level}"
        );
    }
    assert_eq!(got.unet.text_time_dims(), Some((256, 2816)));
    assert_eq!(got.text.num_attention_heads, 12);
    assert_eq!(got_t2.num_attention_heads, 20);
    assert_eq!(got_t2.projection_dim, Some(1280));
    assert_eq!(got.vae.scaling_factor, 0.13025);
    assert!(got.force_zeros_for_empty_prompt);
}
