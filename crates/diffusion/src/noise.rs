//! Portable Gaussian noise: the same seed gives the same latents on any machine and thread count.
//!
//! Algorithm (documented so other tools can reproduce it): a ChaCha20 stream
//! (`rand_chacha::ChaCha20Rng::seed_from_u64(seed)`) yields u64 words; each pair of words gives
//! two uniforms `u = (w >> 11) as f64 * 2^-53` (u1 is mapped to `1 - u` so it is never 0), and the
//! Box–Muller transform turns them into two standard normals `r cos θ`, `r sin θ` with
//! `r = sqrt(-2 ln u1)`, `θ = 2π u2`. Values fill the tensor in row-major (C) order, in f64,
//! then are cast to f32. Noise is drawn on the host whatever the device, so a seed gives the
//! same composition everywhere.

use candle_core::{Shape, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_nn::runtime::host;

/// Where Gaussian noise comes from: a seeded RNG in renders, stored tensors in parity tests.
pub trait NoiseSource {
    fn noise(&mut self, shape: &Shape) -> candle_core::Result<Tensor>;
}

/// The portable seeded Gaussian source described in the module docs.
pub struct SeededNoise {
    rng: ChaCha20Rng,
    spare: Option<f64>,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    /// Where the stream stands (ChaCha word position and the pending Box–Muller value), so a
    /// resumed render draws exactly the noise an uninterrupted one would.
    pub fn state(&self) -> NoiseState {
        NoiseState {
            word_pos: self.rng.get_word_pos(),
            spare: self.spare,
        }
    }

    /// Continue from a [`SeededNoise::state`] of a source with the same seed.
    pub fn restore(&mut self, state: NoiseState) {
        self.rng.set_word_pos(state.word_pos);
        self.spare = state.spare;
    }

    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn next_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

/// A [`SeededNoise`]'s position in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NoiseState {
    pub word_pos: u128,
    pub spare: Option<f64>,
}

/// A shared seeded source: the pass draws from it while a checkpoint hook reads its state.
impl NoiseSource for &std::cell::RefCell<SeededNoise> {
    fn noise(&mut self, shape: &Shape) -> candle_core::Result<Tensor> {
        self.borrow_mut().noise(shape)
    }
}

impl NoiseSource for SeededNoise {
    fn noise(&mut self, shape: &Shape) -> candle_core::Result<Tensor> {
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| self.next_normal() as f32)
            .collect();
        Tensor::from_vec(values, shape, &host())
    }
}

/// Replays stored noise tensors in order (used to reproduce reference runs exactly).
pub struct ReplayNoise {
    queue: std::collections::VecDeque<Tensor>,
}

impl ReplayNoise {
    pub fn new(tensors: impl IntoIterator<Item = Tensor>) -> Self {
        Self {
            queue: tensors.into_iter().collect(),
        }
    }
}

impl NoiseSource for ReplayNoise {
    fn noise(&mut self, shape: &Shape) -> candle_core::Result<Tensor> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| candle_core::Error::Msg("replay noise exhausted".into()))?;
        if t.shape() != shape {
            candle_core::bail!("replay noise has shape {:?}, wanted {:?}", t.shape(), shape);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_and_standard_normal() {
        let a = SeededNoise::new(42)
            .noise(&Shape::from((4, 64, 64)))
            .unwrap();
        let b = SeededNoise::new(42)
            .noise(&Shape::from((4, 64, 64)))
            .unwrap();
        let c = SeededNoise::new(43)
            .noise(&Shape::from((4, 64, 64)))
            .unwrap();
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(a, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
    }

    #[test]
    fn restored_state_continues_the_stream() {
        let shape = Shape::from((3, 5));
        let mut a = SeededNoise::new(7);
        a.noise(&shape).unwrap(); // 15 values: a Box-Muller spare is pending
        let state = a.state();
        assert!(state.spare.is_some());
        let mut b = SeededNoise::new(7);
        b.restore(state);
        let next = |n: &mut SeededNoise| n.noise(&shape).unwrap().flatten_all().unwrap();
        let (x, y) = (next(&mut a), next(&mut b));
        assert_eq!(x.to_vec1::<f32>().unwrap(), y.to_vec1::<f32>().unwrap());
    }
}
