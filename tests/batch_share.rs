//! Batches share models: consecutive specs of one model load each component once in total and
//! write exactly the bytes each spec alone writes; a change of model, or a render under a memory
//! budget, loads again what it needs; resident memory does not grow across a batch of 10.

use crate::common;

use common::{repo_path, tessera_bin, tiny_model_dir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A 64x64 spec of `model` with seed 7; `canvas` goes into its `[canvas]` table, `extra`
/// after its `[prompt]` table.
fn write_spec(dir: &Path, name: &str, model: &Path, canvas: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let body = format!(
        "model = {:?}\n[canvas]\nwidth = 64\nheight = 64\nsteps = 2\nseed = 7\n\
         scheduler = \"dpm++2m\"\n{canvas}[prompt]\ntext = \"a sky over the sea, {name}\"\n\
         {extra}",
        model.display().to_string(),
    );
    std::fs::write(&path, body).unwrap();
    path
}

fn tessera(args: &[&str]) -> Output {
    let o = Command::new(tessera_bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "tessera {args:?}: {err}");
    o
}

/// The `--json` lines of a batch, in order.
fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A `model_loads` object as a map.
fn loads(report: &Value) -> BTreeMap<String, u64> {
    let loads = report["model_loads"].as_object().expect("model_loads");
    loads
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

const ALL: &[(&str, u64)] = &[("text encoder", 1), ("unet", 1), ("vae decoder", 1)];

#[test]
fn a_batch_of_one_model_loads_each_component_once_and_writes_what_each_spec_alone_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_model_dir();
    // b has a guide (the VAE encoder too), c two variations: four renders.
    write_spec(dir, "a", &model, "", "");
    write_spec(
        dir,
        "b",
        &model,
        "",
        "[guide]\nsize = [32, 32]\nstrength = 0.5\n",
    );
    let c = write_spec(dir, "c", &model, "count = 2\n", "");

    let o = tessera(&["render", dir.to_str().unwrap(), "--json"]);
    let got = lines(&o);
    let per_spec: Vec<_> = got.iter().map(|l| loads(&l["report"])).collect();
    let encoder = &[("vae encoder", 1)];
    assert_eq!(per_spec, [map(ALL), map(encoder), map(&[]), map(&[])]);
    let mut total = BTreeMap::new();
    for (k, n) in per_spec.iter().flatten() {
        *total.entry(k.clone()).or_insert(0) += n;
    }
    assert_eq!(total, map(&[ALL, encoder].concat()), "each component once");
    let held: Vec<_> = got.iter().map(|l| l["models_held"].clone()).collect();
    let all = serde_json::json!(["text encoders", "unet", "vae"]);
    assert_eq!(held, [all.clone(), all.clone(), all, serde_json::json!([])]);

    // Each spec alone (in the same place, so the PNG's own path chunk is the same).
    let outputs = ["a.png", "b.png", "b.guide.png", "c-s7.png", "c-s8.png"];
    let batch: Vec<Vec<u8>> = outputs
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect();
    for name in outputs {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    for spec in ["a", "b"] {
        let spec = dir.join(format!("{spec}.toml"));
        let o = tessera(&["render", spec.to_str().unwrap(), "--json"]);
        let alone: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut want = map(ALL);
        if spec.ends_with("b.toml") {
            want.insert("vae encoder".into(), 1);
        }
        assert_eq!(loads(&alone), want, "a lone render loads as before");
    }
    for seed in ["7", "8"] {
        let out = dir.join(format!("c-s{seed}.png"));
        let out = out.to_str().unwrap();
        tessera(&["render", c.to_str().unwrap(), "--seed", seed, "--out", out]);
    }
    for (name, bytes) in outputs.iter().zip(&batch) {
        let alone = std::fs::read(dir.join(name)).unwrap();
        assert!(alone == *bytes, "{name}: the batch's bytes differ");
    }
}

#[test]
fn a_change_of_model_or_a_budgeted_render_loads_again_what_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (sd, poster) = (tiny_model_dir(), repo_path("models/tiny-poster"));
    write_spec(dir, "a", &sd, "", "");
    write_spec(dir, "b", &sd, "", "");
    write_spec(dir, "c", &poster, "", "");
    write_spec(dir, "d", &sd, "", "");
    // e shares d's model but renders under a budget: it must start with nothing held.
    write_spec(dir, "e", &sd, "max_memory = \"4G\"\n", "");
    write_spec(dir, "f", &sd, "", "");

    let o = tessera(&["render", dir.to_str().unwrap(), "--json"]);
    let got = lines(&o);
    let per_spec: Vec<_> = got.iter().map(|l| loads(&l["report"])).collect();
    let none = map(&[]);
    let all = map(ALL);
    assert_eq!(
        per_spec,
        [
            all.clone(),
            none,
            all.clone(),
            all.clone(),
            all.clone(),
            all
        ]
    );
    let held: Vec<usize> = got
        .iter()
        .map(|l| l["models_held"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        held,
        [3, 0, 0, 0, 0, 0],
        "kept only for a render that shares them"
    );
}

#[test]
fn resident_memory_does_not_grow_across_a_batch_of_ten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for i in 0..10 {
        write_spec(dir, &format!("s{i}"), &tiny_model_dir(), "", "");
    }
    let o = tessera(&["render", dir.to_str().unwrap(), "--json"]);
    let got = lines(&o);
    assert_eq!(got.len(), 10);
    let rss: Vec<u64> = got
        .iter()
        .map(|l| l["rss_bytes"].as_u64().unwrap())
        .collect();
    let loads: Vec<_> = got.iter().map(|l| loads(&l["report"])).collect();
    assert_eq!(loads[0], map(ALL));
    assert!(loads[1..].iter().all(|l| l.is_empty()), "{loads:?}");
    // After the first spec the shared models are resident; later specs add nothing to them
    // (1 MiB for the allocator's own bookkeeping), and the last one gives them back.
    let first = rss[0];
    let most = *rss[1..9].iter().max().unwrap();
    assert!(most <= first + (1 << 20), "RSS grew: {rss:?}");
    assert!(rss[9] < first, "the last spec kept its models: {rss:?}");
}
