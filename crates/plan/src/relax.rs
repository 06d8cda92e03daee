//! What fitting a render to its memory changes, one step at a time (attention chunks, VAE
//! tile, window size), and how the choices are put in words.

use crate::spec::Settings;

/// What a budget chose, in words, for `render` and `plan` alike.
pub fn describe_choices(chosen: &[String]) -> String {
    match chosen {
        [] => "the settings fit as given".to_string(),
        _ => format!("chose {}", chosen.join(", ")),
    }
}

/// What fitting changed, in words.
pub(crate) fn changes(from: &Settings, to: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if to.attention_budget != from.attention_budget {
        out.push(format!(
            "attention chunks of {} MiB",
            to.attention_budget >> 20
        ));
    }
    if to.keep_decoder != from.keep_decoder {
        out.push("VAE decoder read again for the final decode".into());
    }
    if to.stream_weights != from.stream_weights {
        out.push("UNet weights streamed from disk layer by layer".into());
    }
    if to.tiles.vae != from.tiles.vae {
        out.push(format!("VAE tiles of {} px", to.tiles.vae.unwrap_or(0)));
    }
    if let (Some((w, h)), None) = (to.tiles.size, from.tiles.size) {
        out.push(format!("windows of {w}x{h} px"));
    }
    if to.window_group != from.window_group {
        out.push(format!(
            "up to {} windows per UNet evaluation",
            to.window_group
        ));
    }
    if to.precision != from.precision {
        out.push(format!("{} weights", to.precision.name()));
    }
    out
}

pub(crate) fn shrink_attention(s: &mut Settings, mib: usize) -> bool {
    let bytes = mib << 20;
    (s.attention_budget > bytes) && {
        s.attention_budget = bytes;
        true
    }
}

pub(crate) fn shrink_vae_tile(s: &mut Settings, px: usize) -> bool {
    (s.tiles.vae.is_none_or(|t| t > px)) && {
        s.tiles.vae = Some(px);
        true
    }
}

/// Windows of `fraction` (numerator, denominator) of the native size on each side, in
/// multiples of 64 px, if smaller than the window planned now.
pub(crate) fn shrink_window(
    s: &mut Settings,
    native: (usize, usize),
    fraction: (usize, usize),
) -> bool {
    let side = |n: usize| (n * fraction.0 / fraction.1 / 64).max(1) * 64;
    let (pw, ph) = (side(native.0), side(native.1));
    let (w, h) = s.tiles.size.unwrap_or(native);
    let (w, h) = (
        w.min(s.width.unwrap_or(native.0)),
        h.min(s.height.unwrap_or(native.1)),
    );
    if pw >= w && ph >= h {
        return false;
    }
    let (pw, ph) = (pw.min(w), ph.min(h));
    s.tiles.size = Some((pw, ph));
    s.tiles.overlap = s.tiles.overlap.map(|o| o.min(pw.min(ph) / 4));
    true
}
