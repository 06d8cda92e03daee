//! One `step` of each scheduler on a (1, 4, 128, 128) latent (a 1024x1024 canvas), CPU f32.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tessera::noise::{NoiseSource, SeededNoise};
use tessera::scheduler::{self, SchedulerConfig, SchedulerKind};

fn bench_steps(c: &mut Criterion) {
    let config = SchedulerConfig::default();
    let shape = (1, 4, 128, 128);
    let mut rng = SeededNoise::new(1);
    let sample = rng.noise(&shape.into()).unwrap();
    let eps = rng.noise(&shape.into()).unwrap();
    let mut group = c.benchmark_group("scheduler_step_1x4x128x128");
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmPlusPlus2M,
    ] {
        group.bench_function(kind.name(), |b| {
            // A fresh scheduler per batch; step at a middle timestep so DPM++ runs its
            // second-order update (one first-order step beforehand fills its history).
            b.iter_batched(
                || {
                    let mut s = scheduler::build(kind, &config, 10).unwrap();
                    let t0 = s.timesteps()[4];
                    let mut noise = SeededNoise::new(2);
                    let x = s.step(&eps, t0, &sample, &mut noise).unwrap();
                    (s, x, noise)
                },
                |(mut s, x, mut noise)| {
                    let t = s.timesteps()[5];
                    black_box(s.step(&eps, t, &x, &mut noise).unwrap())
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_steps);
criterion_main!(benches);
