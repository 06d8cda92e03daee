//! Writing files atomically: to a temporary sibling, then a rename, so an interrupted or
//! failed run never leaves a partial file where a result belongs.

use crate::{Error, Result};
use std::path::Path;

/// Write `path` through `write` via a temporary sibling and a rename.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    remove_orphans(dir, name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        write(&mut file)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Remove temporary siblings of `name` left by processes that no longer run (killed with
/// SIGKILL mid-write: a streamed PNG's temporary file lives through the whole decode).
fn remove_orphans(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| {
            cfg!(target_os = "linux") && !Path::new("/proc").join(pid.to_string()).exists()
        });
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_temporaries_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("tessera-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No process has pid 4194304 (above Linux's pid_max); ours is alive.
        let dead = dir.join(".out.png.tmp-4194304");
        let alive = dir.join(format!(".out.png.tmp-{}", std::process::id()));
        std::fs::write(&dead, b"partial").unwrap();
        std::fs::write(dir.join(".other.png.tmp-4194304"), b"x").unwrap();
        write_atomic(&dir.join("out.png"), |f| {
            assert!(alive.exists(), "the live temporary is ours");
            std::io::Write::write_all(f, b"whole").map_err(|e| Error::io("test", e))
        })
        .unwrap();
        assert_eq!(dead.exists(), !cfg!(target_os = "linux"));
        assert!(
            dir.join(".other.png.tmp-4194304").exists(),
            "another file's temporary stays"
        );
        assert_eq!(std::fs::read(dir.join("out.png")).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
