//! The validators, one of each, shared by the spec, the planner and the command line: every
//! rejection names the field and says the fix.

use tessera_core::{Error, Result};

/// Builds the error for a field: `bad(field, message, fix)` (it knows the file).
pub type Bad<'a> = dyn Fn(&str, String, &str) -> Error + 'a;

/// One of a list of names (`what`: "scheduler", "dtype", ...), parsed by `parse`; `None`
/// when none is given.
pub fn named<T>(
    bad: &Bad,
    field: &str,
    what: &str,
    name: Option<&String>,
    parse: impl Fn(&str) -> Option<T>,
    names: &[&str],
) -> Result<Option<T>> {
    name.map(|name| {
        parse(name).ok_or_else(|| {
            bad(
                field,
                format!("unknown {what} {name:?}"),
                &format!("use one of: {}", names.join(", ")),
            )
        })
    })
    .transpose()
}

/// A pixel size the latent grid can hold: a positive multiple of 8 (or 0 where allowed).
pub fn multiple_of_8(bad: &Bad, field: &str, v: usize, allow_zero: bool) -> Result<()> {
    if !v.is_multiple_of(8) || (v == 0 && !allow_zero) {
        let below = (v / 8 * 8).max(8);
        let fix = format!("use a multiple of 8, e.g. {below} or {}", below + 8);
        return Err(bad(
            field,
            format!("{v} is not a positive multiple of 8"),
            &fix,
        ));
    }
    Ok(())
}

/// A number of denoising steps: 1 to 1000.
pub fn steps(bad: &Bad, field: &str, steps: usize) -> Result<usize> {
    if steps == 0 || steps > 1000 {
        return Err(bad(field, format!("{steps} steps"), "use 1 to 1000 steps"));
    }
    Ok(steps)
}

/// A guidance scale: finite, not negative.
pub fn guidance(bad: &Bad, field: &str, g: f64) -> Result<f64> {
    if !g.is_finite() || g < 0.0 {
        return Err(bad(
            field,
            format!("{g}"),
            "use a number >= 0 (7.5 is usual)",
        ));
    }
    Ok(g)
}

/// A share of the schedule, 0 to 1.
pub fn strength(bad: &Bad, field: &str, s: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&s) {
        return Err(bad(field, format!("{s}"), "use a strength between 0 and 1"));
    }
    Ok(s)
}

/// Window overlap in pixels: smaller than the window `(w, h)`.
pub fn overlap(bad: &Bad, field: &str, overlap: usize, (w, h): (usize, usize)) -> Result<()> {
    if overlap >= w.min(h) {
        return Err(bad(
            field,
            format!("{overlap} px is not smaller than the {w}x{h} window"),
            "use an overlap of about a quarter of the window size",
        ));
    }
    Ok(())
}

/// A pixel size given as a command-line flag (`--tile 256`).
pub fn flag_px(flag: &str, v: usize, allow_zero: bool) -> Result<()> {
    let bad = |_: &str, message: String, fix: &str| Error::input(flag, None, message, fix);
    multiple_of_8(&bad, flag, v, allow_zero)
}

/// A LoRA strength: finite (negative weights are allowed, as in A1111, to push away).
pub fn lora_weight(bad: &Bad, field: &str, w: f64) -> Result<()> {
    if !w.is_finite() || w.abs() > 100.0 {
        return Err(bad(
            field,
            format!("LoRA weight {w} is out of range"),
            "use a weight such as 0.8 (usually between -2 and 2)",
        ));
    }
    Ok(())
}

/// `--lora FILE[:WEIGHT]` (a trailing `:number` is the weight; default 1).
pub fn lora_flag(bad: &Bad, arg: &str) -> Result<(std::path::PathBuf, f64)> {
    let (path, weight) =
        match arg.rsplit_once(':') {
            Some((p, w)) if !p.is_empty() => match w.parse::<f64>() {
                Ok(w) => (p, w),
                Err(_) => return Err(bad(
                    "--lora",
                    format!("{w:?} in {arg:?} is not a weight"),
                    "write --lora FILE or --lora FILE:WEIGHT, e.g. --lora style.safetensors:0.8",
                )),
            },
            _ => (arg, 1.0),
        };
    lora_weight(bad, "--lora", weight)?;
    Ok((path.into(), weight))
}
