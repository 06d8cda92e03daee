//! Batches: three `--shard I/3` processes render a batch of 6 specs exactly once between them;
//! a shard killed mid-spec and run again redoes only what was missing; a failing spec does not
//! stop a batch and the exit status counts the failures.

use crate::common;

use common::{tessera_bin, tiny_model_dir};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A 64x64 spec; `extra` is appended to its `[canvas]` table when it has no table header of
/// its own, else after the spec.
fn write_spec(dir: &Path, name: &str, steps: usize, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let (canvas, tail) = match extra.starts_with('[') {
        true => ("", extra),
        false => (extra, ""),
    };
    let body = format!(
        "model = {:?}\n[canvas]\nwidth = 64\nheight = 64\nsteps = {steps}\nseed = 3\n\
         scheduler = \"dpm++2m\"\n{canvas}[prompt]\ntext = \"a sky\"\n{tail}",
        tiny_model_dir().display().to_string()
    );
    std::fs::write(&path, body).unwrap();
    path
}

/// The `--json` lines of a batch: spec file name (`#seed` for variations) -> status.
fn statuses(o: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let spec = Path::new(v["spec"].as_str().unwrap());
            let mut name = spec.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(seed) = v["seed"].as_u64() {
                name += &format!("#{seed}");
            }
            (name, v["status"].as_str().unwrap().to_string())
        })
        .collect()
}

fn shard(dir: &Path, i: usize) -> Command {
    let mut c = Command::new(tessera_bin());
    c.arg("render")
        .arg(dir)
        .args(["--resume", "--json", "--shard", &format!("{i}/3")]);
    c
}

#[test]
fn three_shards_render_a_batch_once_and_a_killed_shard_redoes_only_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Sorted: a b c d e f; shard 1/3 takes b and e. e is slow, to be killed in the middle.
    for name in ["a", "b", "c", "d", "f"] {
        write_spec(dir, name, 2, "");
    }
    write_spec(dir, "e", 150, "");
    let e_ckpt = dir.join("e.checkpoint.safetensors");

    // Shard 1 is killed while rendering e, with b done.
    let mut killed = shard(dir, 1)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !e_ckpt.exists() {
        assert!(
            killed.try_wait().unwrap().is_none(),
            "shard 1 ended before e was under way"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "e never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: killing our own child process.
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    killed.wait().unwrap();
    assert!(dir.join("b.png").exists() && !dir.join("e.png").exists());

    // The three shards, as three processes at once (shard 1 run again).
    let children: Vec<_> = (0..3)
        .map(|i| {
            shard(dir, i)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut seen = BTreeMap::new();
    for (i, o) in outputs.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "shard {i}: {err}");
        for (spec, status) in statuses(o) {
            assert!(
                seen.insert(spec.clone(), (i, status)).is_none(),
                "{spec} in two shards"
            );
        }
    }
    let want: BTreeMap<String, (usize, String)> = [
        ("a", 0, "rendered"),
        ("b", 1, "skipped"),
        ("c", 2, "rendered"),
        ("d", 0, "rendered"),
        ("e", 1, "rendered"),
        ("f", 2, "rendered"),
    ]
    .into_iter()
    .map(|(n, i, s)| (format!("{n}.toml"), (i, s.to_string())))
    .collect();
    assert_eq!(seen, want);
    let err = String::from_utf8_lossy(&outputs[1].stderr);
    assert!(
        err.contains("resuming from") && err.contains("e.checkpoint"),
        "{err}"
    );
    for name in ["a", "b", "c", "d", "e", "f"] {
        assert!(
            dir.join(format!("{name}.png")).is_file(),
            "{name}.png missing"
        );
    }
    assert!(!e_ckpt.exists(), "the finished render left its checkpoint");
}

#[test]
fn a_failing_spec_does_not_stop_the_batch_and_is_counted_and_variations_render() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write_spec(tmp.path(), "good", 2, "");
    let bad = write_spec(tmp.path(), "bad", 2, "[tiles]\noverlap = 999\n");
    let also_bad = write_spec(tmp.path(), "worse", 2, "[canvas]\n");
    let varied = write_spec(tmp.path(), "vary", 2, "count = 2\n");
    // The list comes on stdin (`-`).
    let mut child = Command::new(tessera_bin())
        .args(["render", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = format!(
        "{}\n\n# a comment\n{}\n{}\n{}\n",
        bad.display(),
        good.display(),
        also_bad.display(),
        varied.display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "two failures: {err}");
    let got = statuses(&o);
    assert_eq!(got["good.toml"], "rendered");
    assert_eq!(got["bad.toml"], "failed");
    assert_eq!(got["worse.toml"], "failed");
    // `count = 2` from seed 3: two variations with their own outputs.
    assert_eq!(got["vary.toml#3"], "rendered");
    assert_eq!(got["vary.toml#4"], "rendered");
    assert!(tmp.path().join("vary-s3.png").is_file() && tmp.path().join("vary-s4.png").is_file());
    assert!(
        err.contains("tiles.overlap") && err.contains("3 rendered") && err.contains("2 failed"),
        "{err}"
    );
    assert!(tmp.path().join("good.png").is_file());
}
