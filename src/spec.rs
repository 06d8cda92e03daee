//! Canvas specs: the TOML file format, CLI overrides, and validation into [`Settings`].
//!
//! Every problem is reported with the file, the field and the fix (exit status 2).

use crate::model::parse_dtype;
use crate::scheduler::SchedulerKind;
use crate::{Error, Result};
use candle_core::DType;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The TOML file as written. Unknown keys are errors so typos never pass silently.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Path of a diffusers model folder, relative to the spec file.
    pub model: Option<String>,
    #[serde(default)]
    pub canvas: CanvasTable,
    pub prompt: Option<PromptTable>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasTable {
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub scheduler: Option<String>,
    pub dtype: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTable {
    pub text: String,
    pub negative: Option<String>,
    pub guidance: Option<f64>,
}

/// Command-line values that override the spec (all optional).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub model: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub prompt: Option<String>,
    pub negative: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub dtype: Option<String>,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
}

/// Everything a render needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    /// `None`: the model's native size.
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub seed: u64,
    pub steps: usize,
    /// `None`: the scheduler named by the model folder's `scheduler_config.json`.
    pub scheduler: Option<SchedulerKind>,
    pub dtype: DType,
    pub prompt: String,
    pub negative: String,
    pub guidance: f64,
    pub output: PathBuf,
    pub init_noise: Option<PathBuf>,
    pub save_latents: Option<PathBuf>,
}

pub const DEFAULT_STEPS: usize = 30;
pub const DEFAULT_GUIDANCE: f64 = 7.5;

impl SpecFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::input(
                path,
                None,
                format!("cannot read the spec: {e}"),
                "check the path of the canvas spec",
            )
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            let field = e.span().map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("line {line}: {}", text[span].trim())
            });
            let fix = if message.contains("unknown field") {
                "remove or correct the key; the spec format is in README.md"
            } else {
                "correct the value; the spec format is in README.md"
            };
            Error::input(path, field.as_deref(), message, fix)
        })
    }
}

/// Resolve a spec (or none: flags alone) plus overrides into validated settings.
pub fn resolve(spec: Option<(&Path, SpecFile)>, o: &Overrides) -> Result<Settings> {
    let (spec_path, spec) = match spec {
        Some((p, s)) => (Some(p.to_path_buf()), s),
        None => (None, SpecFile::default()),
    };
    let origin = spec_path.clone().unwrap_or_else(|| PathBuf::from("<command line>"));
    let base = spec_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bad = |field: &str, message: String, fix: &str| Error::input(&origin, Some(field), message, fix);

    let model = match (&o.model, &spec.model) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => base.join(m),
        (None, None) => crate::model::ModelDir::bundled_tiny(),
    };
    let c = &spec.canvas;
    let width = o.width.or(c.width);
    let height = o.height.or(c.height);
    for (field, v) in [("canvas.width", width), ("canvas.height", height)] {
        let Some(v) = v else { continue };
        if v == 0 || v % 8 != 0 {
            let below = (v / 8 * 8).max(8);
            let fix = format!("use a multiple of 8, e.g. {below} or {}", below + 8);
            return Err(bad(field, format!("{v} is not a positive multiple of 8"), &fix));
        }
    }
    let steps = o.steps.or(c.steps).unwrap_or(DEFAULT_STEPS);
    if steps == 0 || steps > 1000 {
        return Err(bad("canvas.steps", format!("{steps} steps"), "use 1 to 1000 steps"));
    }
    let scheduler = match o.scheduler.as_ref().or(c.scheduler.as_ref()) {
        None => None,
        Some(name) => Some(SchedulerKind::from_name(name).ok_or_else(|| {
            bad(
                "canvas.scheduler",
                format!("unknown scheduler {name:?}"),
                &format!("use one of: {}", SchedulerKind::NAMES.join(", ")),
            )
        })?),
    };
    let dtype_name = o.dtype.as_ref().or(c.dtype.as_ref()).map(String::as_str).unwrap_or("f32");
    let dtype = parse_dtype(dtype_name).ok_or_else(|| {
        bad("canvas.dtype", format!("unknown dtype {dtype_name:?}"), "use f32, f16 or bf16")
    })?;
    let p = spec.prompt.clone().unwrap_or_default();
    let guidance = o.guidance.or(p.guidance).unwrap_or(DEFAULT_GUIDANCE);
    if !guidance.is_finite() || guidance < 0.0 {
        return Err(bad("prompt.guidance", format!("{guidance}"), "use a number >= 0 (7.5 is usual)"));
    }
    let output = match (&o.out, &spec_path) {
        (Some(out), _) => out.clone(),
        (None, Some(sp)) => sp.with_extension("png"),
        (None, None) => PathBuf::from("tessera.png"),
    };
    Ok(Settings {
        model,
        width,
        height,
        seed: o.seed.or(c.seed).unwrap_or(0),
        steps,
        scheduler,
        dtype,
        prompt: o.prompt.clone().unwrap_or(p.text),
        negative: o.negative.clone().or(p.negative).unwrap_or_default(),
        guidance,
        output,
        init_noise: o.init_noise.clone(),
        save_latents: o.save_latents.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(toml: &str) -> String {
        let p = Path::new("poster.toml");
        match SpecFile::parse(toml, p).and_then(|s| resolve(Some((p, s)), &Overrides::default())) {
            Ok(_) => panic!("expected an error for {toml:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn typo_names_the_key_and_line() {
        let e = err_of("[canvas]\nwidht = 512\n");
        assert!(e.contains("poster.toml") && e.contains("widht") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_values_name_field_and_fix() {
        let e = err_of("[canvas]\nwidth = 500\n");
        assert!(e.contains("canvas.width") && e.contains("496 or 504"), "{e}");
        let e = err_of("[canvas]\nscheduler = \"heun\"\n");
        assert!(e.contains("canvas.scheduler") && e.contains("euler-a"), "{e}");
        let e = err_of("[canvas]\ndtype = \"f64\"\n");
        assert!(e.contains("canvas.dtype"), "{e}");
    }

    #[test]
    fn flags_override_spec_and_model_is_relative_to_spec() {
        let p = Path::new("dir/poster.toml");
        let s = SpecFile::parse(
            "model = \"m\"\n[canvas]\nwidth = 64\nseed = 3\n[prompt]\ntext = \"a\"\n",
            p,
        )
        .unwrap();
        let o = Overrides {
            width: Some(128),
            prompt: Some("b".into()),
            ..Default::default()
        };
        let r = resolve(Some((p, s)), &o).unwrap();
        assert_eq!((r.width, r.seed, r.prompt.as_str()), (Some(128), 3, "b"));
        assert_eq!(r.model, Path::new("dir/m"));
        assert_eq!(r.output, Path::new("dir/poster.png"));
    }
}
