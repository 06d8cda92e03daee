//! The settings that fit a `--max-memory` budget, from the per-phase estimate
//! ([`crate::estimate`]): relaxed in order of cost, then grown to one ceiling by window groups
//! and the tiled VAE's RAM stores.

use crate::estimate::MIB;
pub use crate::estimate::{estimate, Estimate, MemoryFacts};
use crate::plan::Plan;
pub use crate::relax::describe_choices;
use crate::relax::{changes, shrink_attention, shrink_vae_tile, shrink_window};
use crate::spec::Settings;
use tessera_core::choices::Precision;
use tessera_core::units::mib;
use tessera_core::{Error, Result};

/// Headroom kept free under a budget for what the estimate cannot see (page cache, jitter).
const HEADROOM: f64 = 0.9;
/// Windows share a UNet evaluation, and the tiled VAE keeps stores in RAM, while that raises
/// the estimated peak by at most this share: memory stays that of one window, and the tiny
/// model's per-layer overhead is paid once per group rather than once per window.
const GROUP_GROWTH: f64 = 0.10;
/// The most windows one evaluation takes.
const MAX_GROUP: usize = 16;

/// What planning needs to know of a model, read from configs and weight headers (no weights).
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// The model's native picture size `(width, height)` in pixels.
    pub native_size: (usize, usize),
    pub memory: MemoryFacts,
}

impl ModelFacts {
    /// Facts for planning geometry only (the memory estimate is then meaningless).
    pub fn geometry_only(native_size: (usize, usize)) -> Self {
        Self {
            native_size,
            memory: MemoryFacts::default(),
        }
    }
}

/// Settings fitted to a budget, with their plan, its estimate and what fitting changed.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub settings: Settings,
    pub plan: Plan,
    pub estimate: Estimate,
    /// What fitting changed, in words (empty without a budget or when it fit as given).
    pub chosen: Vec<String>,
}

fn planned(s: &Settings, facts: &ModelFacts) -> Result<(Plan, Estimate)> {
    let plan = Plan::new(s, facts.native_size)?;
    let estimate = estimate(&plan, &facts.memory, s);
    Ok((plan, estimate))
}

/// Fit `s` to its `max_memory`: relax, in order of cost to speed and quality, the attention
/// chunk, weight streaming, the VAE tile, the window size (unless the spec fixes it) and the
/// precision, until the estimate fits with headroom. An impossible budget is an error that
/// names the smallest estimate found. Without a budget the settings are planned as they are.
pub fn fit(s: &Settings, facts: &ModelFacts) -> Result<Fitted> {
    let original = s;
    let mut s = s.clone();
    // Settings are relaxed and windows grouped with every tiled-VAE store in files; the RAM
    // the stores may have is decided last (`grant_stores`).
    s.vae_scratch = Some(0);
    let (mut plan, mut est) = planned(&s, facts)?;
    let Some(budget) = s.max_memory else {
        let ceiling = grown(&est, u64::MAX);
        est = group_windows(&mut s, &plan, &facts.memory, est, ceiling);
        // On a GPU the stores take what the device has free (through host RAM a 2048² decode
        // took 62 s instead of 3.7 s on an H200), so a small card spills rather than fails.
        s.vae_scratch = match facts.memory.device_free {
            None => grant_stores(&s, &plan, &facts.memory, ceiling).0,
            Some(0) => None,
            Some(free) => Some(((free as f64 * HEADROOM) as u64).saturating_sub(est.peak())),
        };
        let estimate = estimate(&plan, &facts.memory, &s);
        return Ok(Fitted {
            settings: s,
            plan,
            estimate,
            chosen: Vec::new(),
        });
    };
    let limit = (budget as f64 * HEADROOM) as u64;
    // Under a budget the decoder is read again for the final decode (a fraction of a second)
    // rather than held through the canvas pass, so the choice does not depend on canvas size.
    let guide_rendered = plan.guide.as_ref().is_some_and(|g| g.image.is_none());
    if s.keep_decoder && guide_rendered {
        s.keep_decoder = false;
        (plan, est) = planned(&s, facts)?;
    }
    let window_fixed = s.tiles.size.is_some();
    let native = facts.native_size;
    type Step = Box<dyn Fn(&mut Settings) -> bool>;
    let steps: Vec<Step> = vec![
        Box::new(|s| shrink_attention(s, 64)),
        Box::new(|s| shrink_attention(s, 16)),
        Box::new(|s| !std::mem::replace(&mut s.stream_weights, true)),
        Box::new(|s| shrink_vae_tile(s, 256)),
        Box::new(|s| shrink_vae_tile(s, 128)),
        Box::new(move |s| !window_fixed && shrink_window(s, native, (3, 4))),
        Box::new(move |s| !window_fixed && shrink_window(s, native, (1, 2))),
        Box::new(|s| {
            s.precision == Precision::F32 && {
                s.precision = Precision::F16;
                true
            }
        }),
    ];
    for step in &steps {
        if est.peak() <= limit {
            break;
        }
        if step(&mut s) {
            (plan, est) = planned(&s, facts)?;
        }
    }
    if est.peak() > limit {
        return Err(Error::input(
            &s.origin,
            Some("canvas.max_memory"),
            format!(
                "a budget of {} cannot be met: the leanest settings ({}) are estimated at {} \
                 (and {:.0}% of the budget is kept free)",
                mib(budget),
                changes(original, &s).join(", "),
                mib(est.peak()),
                (1.0 - HEADROOM) * 100.0
            ),
            format!(
                "raise --max-memory to at least {:.0}M, or use a smaller model",
                (est.peak() as f64 / HEADROOM / MIB as f64).ceil()
            ),
        ));
    }
    // A later step (streaming) may have made an earlier one (small attention chunks, which
    // cost time) unnecessary: give back what still fits.
    for wider_mib in [64, original.attention_budget >> 20] {
        if s.attention_budget < wider_mib << 20 && wider_mib << 20 <= original.attention_budget {
            let mut wider = s.clone();
            wider.attention_budget = wider_mib << 20;
            let (wider_plan, wider_est) = planned(&wider, facts)?;
            if wider_est.peak() <= limit {
                (s, plan, est) = (wider, wider_plan, wider_est);
            }
        }
    }
    let ceiling = grown(&est, limit);
    group_windows(&mut s, &plan, &facts.memory, est, ceiling);
    (s.vae_scratch, est) = grant_stores(&s, &plan, &facts.memory, ceiling);
    let chosen = changes(original, &s);
    Ok(Fitted {
        settings: s,
        plan,
        estimate: est,
        chosen,
    })
}

/// What the render may grow to from its one-window, stores-in-files estimate: by
/// [`GROUP_GROWTH`], within `limit`. Window groups (the canvas pass) and the tiled VAE's RAM
/// stores (the VAE phases) both grow to it and no further, so a render's peak is that of one
/// window whatever the canvas size: a 2K canvas fills both, a 512 one the stores.
fn grown(one: &Estimate, limit: u64) -> u64 {
    ((one.peak() as f64 * (1.0 + GROUP_GROWTH)) as u64).min(limit)
}

/// The most RAM the tiled VAE's stores may have with every VAE phase's estimate within
/// `ceiling` (found by bisection: the estimate grows with the grant, then stops where the
/// stores of the largest pass fit); returns it with the estimate.
fn grant_stores(
    s: &Settings,
    plan: &Plan,
    m: &MemoryFacts,
    ceiling: u64,
) -> (Option<u64>, Estimate) {
    let with = |grant: u64| {
        let mut granted = s.clone();
        granted.vae_scratch = Some(grant);
        let est = estimate(plan, m, &granted);
        (est, est.guide_pass.max(est.decode) <= ceiling)
    };
    let (mut fits, mut over) = (0, ceiling.max(1));
    if with(over).1 {
        fits = over;
    }
    while over - fits > MIB && !with(over).1 {
        let mid = fits + (over - fits) / 2;
        match with(mid).1 {
            true => fits = mid,
            false => over = mid,
        }
    }
    (Some(fits), with(fits).0)
}

/// The most windows per UNet evaluation whose estimate stays within `ceiling`; returns the
/// estimate with them.
fn group_windows(
    s: &mut Settings,
    plan: &Plan,
    m: &MemoryFacts,
    one: Estimate,
    ceiling: u64,
) -> Estimate {
    let per_step = plan
        .guide
        .as_ref()
        .map_or(0, |g| g.windows.len())
        .max(plan.windows.len())
        .min(MAX_GROUP);
    let mut best = one;
    for group in 2..=per_step {
        let mut wider = s.clone();
        wider.window_group = group;
        let est = estimate(plan, m, &wider);
        if est.peak() > ceiling {
            break;
        }
        (s.window_group, best) = (group, est);
    }
    best
}
