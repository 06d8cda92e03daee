//! The LDM key map against key names of the released SD 1.5 and SDXL checkpoints.
use super::*;

fn unet(name: &str, up_attention: &[bool]) -> String {
    let part = Part::Unet {
        layers_per_block: 2,
        up_attention: up_attention.to_vec(),
    };
    part.key(name).unwrap().name
}

/// Names as they appear in the released SD 1.5 and SDXL base checkpoints.
#[test]
fn keys_of_released_checkpoints() {
    let sd15 = [false, true, true, true];
    for (d, l) in [
        (
            "down_blocks.0.resnets.0.norm1.weight",
            "input_blocks.1.0.in_layers.0.weight",
        ),
        (
            "down_blocks.0.attentions.1.proj_in.weight",
            "input_blocks.2.1.proj_in.weight",
        ),
        (
            "down_blocks.0.downsamplers.0.conv.weight",
            "input_blocks.3.0.op.weight",
        ),
        (
            "down_blocks.3.resnets.1.conv2.weight",
            "input_blocks.11.0.out_layers.3.weight",
        ),
        (
            "mid_block.resnets.1.time_emb_proj.bias",
            "middle_block.2.emb_layers.1.bias",
        ),
        (
            "up_blocks.0.upsamplers.0.conv.weight",
            "output_blocks.2.1.conv.weight",
        ),
        (
            "up_blocks.1.upsamplers.0.conv.weight",
            "output_blocks.5.2.conv.weight",
        ),
        (
            "up_blocks.1.resnets.0.conv_shortcut.weight",
            "output_blocks.3.0.skip_connection.weight",
        ),
        (
            "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight",
            "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
        ),
        ("time_embedding.linear_2.weight", "time_embed.2.weight"),
        ("conv_out.bias", "out.2.bias"),
    ] {
        assert_eq!(unet(d, &sd15), format!("{UNET_PREFIX}{l}"));
    }
    let sdxl = [true, true, false];
    for (d, l) in [
        (
            "up_blocks.0.upsamplers.0.conv.weight",
            "output_blocks.2.2.conv.weight",
        ),
        (
            "up_blocks.2.resnets.2.norm2.weight",
            "output_blocks.8.0.out_layers.0.weight",
        ),
        ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
        (
            "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight",
            "input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
        ),
    ] {
        assert_eq!(unet(d, &sdxl), format!("{UNET_PREFIX}{l}"));
    }
    let vae = Part::Vae { levels: 4 };
    for (d, l) in [
        (
            "decoder.up_blocks.0.upsamplers.0.conv.weight",
            "decoder.up.3.upsample.conv.weight",
        ),
        (
            "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
            "decoder.up.1.block.0.nin_shortcut.weight",
        ),
        (
            "encoder.mid_block.attentions.0.to_out.0.weight",
            "encoder.mid.attn_1.proj_out.weight",
        ),
        (
            "encoder.mid_block.resnets.1.conv1.bias",
            "encoder.mid.block_2.conv1.bias",
        ),
        ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"),
        ("post_quant_conv.weight", "post_quant_conv.weight"),
    ] {
        assert_eq!(vae.key(d).unwrap().name, format!("{VAE_PREFIX}{l}"));
    }
    let g = Part::OpenClip {
        prefix: SDXL_TEXT2_PREFIX.into(),
    };
    let k = g.key("text_projection.weight").unwrap();
    assert_eq!(k.name, format!("{SDXL_TEXT2_PREFIX}text_projection"));
    assert!(k.transpose);
    let k = g
        .key("text_model.encoder.layers.31.self_attn.v_proj.bias")
        .unwrap();
    assert_eq!(
        (k.name.as_str(), k.third),
        (
            "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias",
            Some(2)
        )
    );
    assert_eq!(
        g.key("text_model.embeddings.position_embedding.weight")
            .unwrap()
            .name,
        format!("{SDXL_TEXT2_PREFIX}positional_embedding")
    );
}
