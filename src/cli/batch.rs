//! Batches for `tessera render`: several specs, folders of specs and `-` (paths on stdin),
//! sorted, optionally one shard of them (`--shard I/N`: every N-th from I, so a job array
//! splits a batch without coordination). With `--resume`, outputs already complete are skipped
//! and unfinished ones continue from their checkpoints. One failing spec does not stop the
//! batch; an interrupt does.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use tessera::{Error, Result};

/// `--shard I/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{text:?}: write I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        match index < count {
            true => Ok(Shard { index, count }),
            false => Err(bad()),
        }
    }
}

/// One render of a batch: a spec, and the seed of one of its variations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Job {
    pub spec: PathBuf,
    pub seed: Option<u64>,
}

/// The renders `args` ask for: the specs named (files as given, folders' `*.toml` files, for
/// `-` the paths listed on stdin, one a line, blank lines and `#` comments skipped), sorted
/// and deduplicated, each spec's variations (`[canvas] seeds` or `count`, unless `fixed_seed`)
/// in turn; then this shard's share.
pub fn jobs(args: &[PathBuf], fixed_seed: bool, shard: Option<Shard>) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for spec in collect(args)? {
        // An unreadable spec is one job, which fails when rendered.
        let seeds = match fixed_seed {
            true => None,
            false => tessera::spec::SpecFile::load(&spec)
                .ok()
                .and_then(|s| s.variation_seeds()),
        };
        match seeds {
            Some(seeds) => jobs.extend(seeds.into_iter().map(|seed| Job {
                spec: spec.clone(),
                seed: Some(seed),
            })),
            None => jobs.push(Job { spec, seed: None }),
        }
    }
    Ok(match shard {
        Some(s) => jobs.into_iter().skip(s.index).step_by(s.count).collect(),
        None => jobs,
    })
}

/// `<stem>-s<seed>.<ext>` beside `output`: the output of one variation.
pub fn variation_output(output: &Path, seed: u64) -> PathBuf {
    let stem = output.file_stem().unwrap_or_default().to_string_lossy();
    let name = match output.extension() {
        Some(ext) => format!("{stem}-s{seed}.{}", ext.to_string_lossy()),
        None => format!("{stem}-s{seed}"),
    };
    output.with_file_name(name)
}

fn collect(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut specs = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| Error::io("reading spec paths from stdin", e))?;
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    specs.push(PathBuf::from(line));
                }
            }
        } else if arg.is_dir() {
            let list = std::fs::read_dir(arg).map_err(|e| not_readable(arg, e))?;
            for entry in list {
                let path = entry.map_err(|e| not_readable(arg, e))?.path();
                if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                    specs.push(path);
                }
            }
        } else {
            specs.push(arg.clone());
        }
    }
    specs.sort();
    specs.dedup();
    Ok(specs)
}

fn not_readable(dir: &Path, e: std::io::Error) -> Error {
    Error::input(
        dir,
        None,
        format!("cannot list the folder: {e}"),
        "give a readable folder of .toml specs",
    )
}

/// An output is complete when it exists and no checkpoint is left beside it (outputs are
/// written whole, before the checkpoint goes).
pub fn is_complete(output: &Path) -> bool {
    output.is_file() && !tessera::resume::path_for(output).exists()
}

/// Resident memory of this process in bytes (Linux), to show that a batch does not grow.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_sorted_batch_with_its_variations() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["c.toml", "a.toml", "b.toml", "e.toml", "x.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::write(dir.path().join("d.toml"), "[canvas]\nseed = 5\ncount = 3\n").unwrap();
        let all = jobs(&[dir.path().to_path_buf()], false, None).unwrap();
        assert_eq!(all.len(), 7);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let d: Vec<_> = all.iter().filter_map(|j| j.seed).collect();
        assert_eq!(d, [5, 6, 7]);
        assert_eq!(jobs(&[dir.path().into()], true, None).unwrap().len(), 5);
        let mut union = Vec::new();
        for index in 0..3 {
            let shard = Some(Shard { index, count: 3 });
            union.extend(jobs(&[dir.path().into()], false, shard).unwrap());
        }
        union.sort();
        assert_eq!(union, all);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        let out = variation_output(Path::new("out/poster.png"), 7);
        assert_eq!(out, Path::new("out/poster-s7.png"));
    }
}
