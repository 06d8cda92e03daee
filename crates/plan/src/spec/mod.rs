//! Canvas specs: the TOML file format ([`SpecFile`]), command-line overrides, and the
//! validated [`Settings`] a render runs from ([`resolve`]), written back into PNGs
//! (`Settings::to_spec_file`).
//!
//! Every problem is reported with the file, the field and the fix (exit status 2).

mod resolve;
mod types;
mod write;

pub use resolve::resolve;
pub use types::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
        assert!(
            e.contains("poster.toml") && e.contains("widht") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_field_and_fix() {
        let e = err_of("[canvas]\nwidth = 500\n");
        assert!(
            e.contains("canvas.width") && e.contains("496 or 504"),
            "{e}"
        );
        let e = err_of("[canvas]\nscheduler = \"heun\"\n");
        assert!(
            e.contains("canvas.scheduler") && e.contains("euler-a"),
            "{e}"
        );
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
        assert_eq!(
            (r.width, r.seed, r.background.unwrap().text.as_str()),
            (Some(128), 3, "b")
        );
        assert_eq!(r.model.as_deref(), Some(Path::new("dir/m")));
        assert_eq!(r.output, Path::new("dir/poster.png"));
    }
}
