//! The UNet as a flat program: the sequence of layers of the forward pass (head, each resnet,
//! spatial transformer and resampler of the down, mid and up blocks, tail), read from the
//! config, with which outputs are kept as skip connections.

use super::UNetConfig;

/// What one layer is, without its weights: enough to build it and to keep the skips.
#[derive(Debug, Clone)]
pub(super) struct LayerSpec {
    pub kind: Kind,
    /// Weight name prefix, e.g. `down_blocks.1.attentions.0`.
    pub prefix: String,
    /// Whether the output is pushed as a skip connection (down path).
    pub push_skip: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Head,
    /// `concat_skip`: the input is the running sample concatenated with a popped skip (up path).
    Resnet {
        cin: usize,
        cout: usize,
        concat_skip: bool,
        output_scale: f64,
    },
    Attention {
        channels: usize,
        block: usize,
    },
    Downsample {
        channels: usize,
    },
    /// Upsamples to the size the down path had at `level`.
    Upsample {
        channels: usize,
        level: usize,
    },
    Tail,
}

impl UNetConfig {
    /// Weight-name prefixes of the forward pass's layers, in order ("" is the head: conv_in
    /// and the time embedding).
    pub fn layer_prefixes(&self) -> Vec<String> {
        self.layer_specs().into_iter().map(|l| l.prefix).collect()
    }

    /// The layer sequence of the forward pass, in order.
    pub(super) fn layer_specs(&self) -> Vec<LayerSpec> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let cross = |b: usize| self.down_block_types[b] == "CrossAttnDownBlock2D";
        let mut out = Vec::new();
        let mut push = |kind, prefix: String, push_skip| {
            out.push(LayerSpec {
                kind,
                prefix,
                push_skip,
            })
        };
        push(Kind::Head, String::new(), true);
        let mut skip_channels = vec![ch[0]];
        for b in 0..n {
            let p = format!("down_blocks.{b}");
            for i in 0..self.layers_per_block {
                let cin = if i == 0 {
                    ch[b.saturating_sub(1)]
                } else {
                    ch[b]
                };
                let resnet = Kind::Resnet {
                    cin,
                    cout: ch[b],
                    concat_skip: false,
                    output_scale: 1.0,
                };
                push(resnet, format!("{p}.resnets.{i}"), !cross(b));
                if cross(b) {
                    let attn = Kind::Attention {
                        channels: ch[b],
                        block: b,
                    };
                    push(attn, format!("{p}.attentions.{i}"), true);
                }
                skip_channels.push(ch[b]);
            }
            if b + 1 < n {
                let down = Kind::Downsample { channels: ch[b] };
                push(down, format!("{p}.downsamplers.0.conv"), true);
                skip_channels.push(ch[b]);
            }
        }
        let top = ch[n - 1];
        let mid_resnet = |i: usize| {
            let kind = Kind::Resnet {
                cin: top,
                cout: top,
                concat_skip: false,
                output_scale: self.mid_block_scale_factor,
            };
            (kind, format!("mid_block.resnets.{i}"), false)
        };
        let (k, p, s) = mid_resnet(0);
        push(k, p, s);
        let attn = Kind::Attention {
            channels: top,
            block: n - 1,
        };
        push(attn, "mid_block.attentions.0".into(), false);
        let (k, p, s) = mid_resnet(1);
        push(k, p, s);
        let mut prev = top;
        for u in 0..n {
            let b = n - 1 - u; // the down block this up block mirrors
            let p = format!("up_blocks.{u}");
            for i in 0..=self.layers_per_block {
                let skip = skip_channels.pop().expect("one skip per up resnet");
                let resnet = Kind::Resnet {
                    cin: prev + skip,
                    cout: ch[b],
                    concat_skip: true,
                    output_scale: 1.0,
                };
                push(resnet, format!("{p}.resnets.{i}"), false);
                if cross(b) {
                    let attn = Kind::Attention {
                        channels: ch[b],
                        block: b,
                    };
                    push(attn, format!("{p}.attentions.{i}"), false);
                }
                prev = ch[b];
            }
            if u + 1 < n {
                let up = Kind::Upsample {
                    channels: ch[b],
                    level: n - 2 - u,
                };
                push(up, format!("{p}.upsamplers.0.conv"), false);
            }
        }
        push(Kind::Tail, String::new(), false);
        out
    }
}
