//! One `step` of each scheduler on a (1, 4, 128, 128) latent (a 1024x1024 canvas), CPU f32:
//! `cargo bench --bench schedulers`. A plain timing loop (fastest of many runs, the scheduler
//! built and primed outside the timed step) rather than criterion, whose thirteen crates
//! every CI build compiled for this one benchmark.

use std::hint::black_box;
use std::time::{Duration, Instant};
use tessera::noise::{NoiseSource, SeededNoise};
use tessera::scheduler::{self, SchedulerConfig, SchedulerKind};

const RUNS: usize = 50;

fn main() {
    let config = SchedulerConfig::default();
    let shape = (1, 4, 128, 128);
    let mut rng = SeededNoise::new(1);
    let sample = rng.noise(&shape.into()).unwrap();
    let eps = rng.noise(&shape.into()).unwrap();
    println!("scheduler step, latent 1x4x128x128, fastest of {RUNS} runs");
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPlusPlus2M,
    ] {
        let mut best = Duration::MAX;
        for _ in 0..RUNS {
            // A fresh scheduler per run, stepped once at a middle timestep so that DPM++ runs
            // its second-order update in the timed step.
            let mut s = scheduler::build(kind, &config, 10).unwrap();
            let t0 = s.timesteps()[4];
            let mut noise = SeededNoise::new(2);
            let x = s.step(&eps, t0, &sample, &mut noise).unwrap();
            let t = s.timesteps()[5];
            let start = Instant::now();
            black_box(s.step(&eps, t, &x, &mut noise).unwrap());
            best = best.min(start.elapsed());
        }
        println!("{:<20} {:>8.3} ms", kind.name(), best.as_secs_f64() * 1e3);
    }
}
