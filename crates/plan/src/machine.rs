//! What no setting can shrink: the canvas-sized state of a render (its latents with the
//! sampler's copies, the decoded picture), checked against the machine's memory before any
//! plan is drawn, so an impossible canvas is refused at once with what it would need.

/// Bytes per latent cell held whatever the settings: latents, initial noise, the blend's sum
/// and weights, the guided noise, the multistep history and the step's output (about 8 copies
/// of 4 f32 channels).
const LATENT_CELL_BYTES: u128 = 8 * 4 * 4;
/// Bytes per picture pixel of the final decode: the f32 RGB tensor and the 8-bit picture.
const PIXEL_BYTES: u128 = 3 * 4 + 3;

/// The memory a `width` x `height` render needs at least (saturating, for absurd sizes).
pub fn canvas_floor(width: usize, height: usize) -> u64 {
    let (w, h) = (width as u128, height as u128);
    let picture = w.saturating_mul(h).saturating_mul(PIXEL_BYTES);
    let latents = (w / 8)
        .saturating_mul(h / 8)
        .saturating_mul(LATENT_CELL_BYTES);
    let bytes = picture.saturating_add(latents);
    bytes.min(u64::MAX as u128) as u64
}

/// The machine's memory in bytes (`MemTotal`, Linux); `None` where unknown.
pub fn memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_grows_with_the_canvas_and_saturates() {
        let small = canvas_floor(512, 512);
        assert_eq!(small, 512 * 512 * 15 + 64 * 64 * 128);
        assert!(canvas_floor(1024, 1024) > 3 * small);
        assert_eq!(canvas_floor(usize::MAX, usize::MAX), u64::MAX);
    }
}
