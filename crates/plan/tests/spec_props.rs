//! Property test of the spec parser, the validator and the planner: 10 000 generated specs,
//! valid and hostile (huge and negative sizes, NaN and infinities, long and unicode strings,
//! unknown keys, wrong types, deeply nested tables and arrays, garbage lines). None may panic;
//! every rejection is bad input (exit 2) naming a field. Seeded, so a failure reproduces: the
//! message gives the case's seed and text. `TESSERA_SPEC_CASES` changes the count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tessera_core::Error;
use tessera_plan::spec::{resolve, Overrides, SpecFile};
use tessera_plan::Plan;

fn pick<'a>(r: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[r.gen_range(0..xs.len())]
}

/// A TOML basic string holding `s` (escaped, so any text is valid TOML).
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

fn text(r: &mut ChaCha8Rng) -> String {
    let unit = pick(
        r,
        &[
            "a", "sky ", "ü", "海", "🦀", "\u{202e}", "\0", "\n", "\"", "\\", "../", "/", " ",
        ],
    );
    let n = match r.gen_range(0..10) {
        0 => r.gen_range(10_000..60_000),
        1 => 0,
        _ => r.gen_range(1..40),
    };
    quoted(&unit.repeat(n))
}

fn int(r: &mut ChaCha8Rng) -> String {
    match r.gen_range(0..12) {
        0 => "0".into(),
        1 => "-8".into(),
        2 => "9223372036854775807".into(),
        3 => "-9223372036854775808".into(),
        4 => (1u64 << r.gen_range(20..62)).to_string(),
        5 => "18446744073709551615".into(), // beyond TOML's i64
        6 => r.gen_range(1..2000).to_string(),
        _ => (r.gen_range(1..200) * 8).to_string(),
    }
}

fn float(r: &mut ChaCha8Rng) -> String {
    pick(
        r,
        &[
            "nan", "inf", "-inf", "-1.0", "0.0", "1e308", "7.5", "0.5", "1.0", "2", "-0.0",
            "1e-320",
        ],
    )
    .into()
}

fn nested(r: &mut ChaCha8Rng) -> String {
    let depth = r.gen_range(1..3000);
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Any value, often of the wrong type for its key.
fn value(r: &mut ChaCha8Rng) -> String {
    match r.gen_range(0..9) {
        0 => text(r),
        1 => float(r),
        2 => pick(r, &["true", "false"]).into(),
        3 => format!("[{}, {}]", int(r), int(r)),
        4 => format!("[{}, {}, {}, {}]", int(r), int(r), int(r), int(r)),
        5 => nested(r),
        6 => "{ a = 1 }".into(),
        7 => "1979-05-27T07:32:00Z".into(),
        _ => int(r),
    }
}

/// A valid value for `key` (the sane half of the cases: specs that reach the planner).
fn sane(r: &mut ChaCha8Rng, key: &str) -> String {
    let px = |r: &mut ChaCha8Rng, lo: usize, hi: usize| (r.gen_range(lo..=hi) * 8).to_string();
    match key {
        "width" | "height" => px(r, 8, 128),
        "steps" => r.gen_range(1..60).to_string(),
        "seed" => r.gen::<u32>().to_string(),
        "scheduler" => quoted(pick(r, &["ddim", "euler", "euler-a", "dpm++2m"])),
        "dtype" => quoted(pick(r, &["f32", "f16", "bf16"])),
        "device" => quoted("cpu"),
        "mask" => quoted(pick(r, &["gaussian", "quartic", "constant"])),
        "max_memory" => quoted(pick(r, &["800M", "2G", "1.5G"])),
        "stream_weights" | "enabled" => pick(r, &["true", "false"]).into(),
        "guidance" | "weight" => pick(r, &["0.0", "1.0", "7.5", "12"]).into(),
        "strength" => pick(r, &["0.0", "0.3", "1.0"]).into(),
        "size" => format!("[{}, {}]", px(r, 8, 8), px(r, 8, 8)),
        "overlap" => px(r, 0, 2),
        "vae" => px(r, 0, 32),
        "attention_mib" | "preview_every" => r.gen_range(1..300).to_string(),
        "rect" => format!("[0, 0, {}, {}]", px(r, 1, 8), px(r, 1, 8)),
        "seeds" => format!("[{}, {}]", r.gen::<u32>(), r.gen::<u32>()),
        "count" => r.gen_range(1..5).to_string(),
        _ => text(r),
    }
}

/// A value of the type its key expects: with `hostile`, drawn from valid and invalid ones.
fn typed(r: &mut ChaCha8Rng, key: &str, hostile: bool) -> String {
    if !hostile {
        return sane(r, key);
    }
    if r.gen_bool(0.1) {
        return value(r);
    }
    match key {
        "scheduler" => quoted(pick(
            r,
            &["ddim", "euler", "euler-a", "dpm++2m", "heun", "DDIM", ""],
        )),
        "dtype" => quoted(pick(r, &["f32", "f16", "bf16", "f64", "int8"])),
        "device" => quoted(pick(
            r,
            &["cpu", "cuda", "cuda:1", "cuda:-1", "metal", "tpu", "auto"],
        )),
        "mask" => quoted(pick(r, &["gaussian", "quartic", "constant", "box"])),
        "max_memory" => quoted(pick(
            r,
            &[
                "800M",
                "2G",
                "1e99G",
                "nan",
                "-5G",
                "",
                "0",
                "99999999999999999999G",
            ],
        )),
        "stream_weights" | "enabled" => pick(r, &["true", "false"]).into(),
        "guidance" | "weight" | "strength" => float(r),
        "size" if r.gen_bool(0.5) => format!("[{}, {}]", int(r), int(r)),
        "rect" => format!("[{}, {}, {}, {}]", int(r), int(r), int(r), int(r)),
        "seeds" => format!("[{}]", vec![int(r); r.gen_range(0..3)].join(", ")),
        "text" | "prompt" | "negative" | "image" | "path" | "model" => text(r),
        _ => int(r),
    }
}

fn table(r: &mut ChaCha8Rng, out: &mut String, header: &str, keys: &[&str], hostile: bool) {
    out.push_str(header);
    out.push('\n');
    for &key in keys {
        // Sane specs name no files (a missing picture or model is rightly refused).
        let file = matches!(key, "image" | "model");
        if r.gen_bool(0.5) && (hostile || !file) {
            out.push_str(&format!("{key} = {}\n", typed(r, key, hostile)));
        }
    }
}

fn spec(r: &mut ChaCha8Rng) -> String {
    let hostile = r.gen_bool(0.5);
    let mut s = String::new();
    if hostile && r.gen_bool(0.3) {
        s.push_str(&format!("model = {}\n", typed(r, "model", hostile)));
    }
    let canvas = [
        "width",
        "height",
        "seed",
        "steps",
        "scheduler",
        "dtype",
        "device",
        "stream_weights",
        "attention_mib",
        "max_memory",
        "seeds",
        "count",
    ];
    if r.gen_bool(0.9) {
        table(r, &mut s, "[canvas]", &canvas, hostile);
    }
    if r.gen_bool(0.8) {
        table(
            r,
            &mut s,
            "[prompt]",
            &["text", "negative", "guidance"],
            hostile,
        );
    }
    if r.gen_bool(0.5) {
        table(
            r,
            &mut s,
            "[tiles]",
            &["size", "overlap", "mask", "vae"],
            hostile,
        );
    }
    for _ in 0..r.gen_range(0..4) {
        let keys = [
            "rect", "prompt", "negative", "guidance", "mask", "weight", "seed", "image", "strength",
        ];
        table(r, &mut s, "[[region]]", &keys, hostile);
    }
    if r.gen_bool(0.4) {
        let keys = ["enabled", "size", "steps", "guidance", "image", "strength"];
        table(r, &mut s, "[guide]", &keys, hostile);
    }
    if r.gen_bool(0.4) {
        table(r, &mut s, "[output]", &["path", "preview_every"], hostile);
    }
    match r.gen_range(0..if hostile { 12 } else { 1000 }) {
        0 => s.push_str(&format!(
            "[{}]\nx = 1\n",
            vec!["t"; r.gen_range(2..2000)].join(".")
        )),
        1 => s.push_str(&format!("unknown_{} = {}\n", r.gen::<u16>(), value(r))),
        2 => s.push_str("[canvas\nwidth = \n"),
        3 => s.push_str(&"{".repeat(r.gen_range(1..5000))),
        4 => s.push_str("[canvas]\nwidth = 64\n"), // a duplicate table
        _ => {}
    }
    s
}

/// `Ok(true)`: planned; `Ok(false)`: rejected as it should be.
fn check(text: &str) -> Result<bool, String> {
    let path = Path::new("fuzz/spec.toml");
    let result = SpecFile::parse(text, path)
        .and_then(|f| resolve(Some((path, f)), &Overrides::default()))
        .and_then(|s| Plan::new(&s, (256, 256)));
    match result {
        Ok(_) => Ok(true),
        Err(e @ Error::Input { field: Some(_), .. }) if e.exit_code() == 2 => Ok(false),
        Err(e) => Err(format!("rejected without exit 2 and a field: {e:?}")),
    }
}

#[test]
fn ten_thousand_generated_specs_never_panic_and_rejections_name_a_field() {
    let cases: u64 = std::env::var("TESSERA_SPEC_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..cases {
        let text = spec(&mut ChaCha8Rng::seed_from_u64(seed));
        let shown = || text.chars().take(600).collect::<String>();
        match std::panic::catch_unwind(|| check(&text)) {
            Ok(Ok(true)) => accepted += 1,
            Ok(Ok(false)) => rejected += 1,
            Ok(Err(why)) => panic!("case {seed}: {why}\n{}", shown()),
            Err(_) => panic!("case {seed} panicked on:\n{}", shown()),
        }
    }
    // The generator must reach the planner as well as be stopped on the way.
    assert!(
        accepted > cases / 20 && rejected > cases / 2,
        "{accepted} planned, {rejected} refused"
    );
    eprintln!("{accepted} specs planned, {rejected} refused");
}
