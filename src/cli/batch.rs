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

/// The spec files named by `args`: files as given, folders' `*.toml` files, and for `-` the
/// paths listed on stdin (one a line; blank lines and `#` comments skipped); sorted and
/// deduplicated, then this shard's share.
pub fn collect(args: &[PathBuf], shard: Option<Shard>) -> Result<Vec<PathBuf>> {
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
    Ok(match shard {
        Some(s) => specs.into_iter().skip(s.index).step_by(s.count).collect(),
        None => specs,
    })
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

/// Give freed heap back to the kernel between specs (glibc keeps it otherwise).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_sorted_batch() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "c.toml", "a.toml", "b.toml", "e.toml", "d.toml", "f.toml", "x.txt",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let all = collect(&[dir.path().to_path_buf()], None).unwrap();
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let mut union = Vec::new();
        for index in 0..4 {
            let shard = collect(&[dir.path().into()], Some(Shard { index, count: 4 })).unwrap();
            union.extend(shard);
        }
        union.sort();
        assert_eq!(union, all);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
    }
}
