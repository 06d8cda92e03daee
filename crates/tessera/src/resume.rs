//! Checkpoints of a render in progress, so an interrupted render (Ctrl-C, a kill, a reboot, a
//! preempted machine) continues where it stopped and writes exactly the bytes an uninterrupted
//! run would.
//!
//! `<output stem>.checkpoint.safetensors` sits beside the output: the pass reached (guide,
//! canvas, or decode once the canvas is done), the next step, the latents, the scheduler's
//! multistep history and the ancestral noise position (f32 tensors stored raw, so nothing is
//! rounded), the guide latents once the guide pass is over, and a fingerprint of everything
//! that determines the result. It is written atomically after every step (at most every
//! [`MIN_INTERVAL`] for canvases whose latents exceed [`BIG_LATENTS`]) and removed once the
//! output is written.

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera_core::{Error, Result};
use tessera_diffusion::noise::NoiseState;
use tessera_diffusion::pass::PassState;
use tessera_nn::runtime::host;

/// Checkpoints of latents above this size are written at most every [`MIN_INTERVAL`].
pub const BIG_LATENTS: usize = 8 << 20;
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
const FORMAT: u32 = 1;

/// Which part of the render a checkpoint is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Guide,
    Canvas,
    /// The canvas is denoised; only the decode is left.
    Decode,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Guide => "guide",
            Phase::Canvas => "canvas",
            Phase::Decode => "decode",
        }
    }
}

/// A checkpoint's content.
#[derive(Clone)]
pub struct Checkpoint {
    pub phase: Phase,
    pub state: PassState,
    /// The encoded guide at canvas size, once the guide pass is over.
    pub guide: Option<Tensor>,
}

/// Where a render's checkpoint lives.
pub fn path_for(output: &Path) -> PathBuf {
    output.with_extension("checkpoint.safetensors")
}

/// Writes a render's checkpoints, throttled for big canvases.
pub struct Writer {
    pub path: PathBuf,
    fingerprint: String,
    last: Cell<Option<Instant>>,
}

impl Writer {
    pub fn new(output: &Path, fingerprint: String) -> Self {
        Self {
            path: path_for(output),
            fingerprint,
            last: Cell::new(None),
        }
    }

    /// Write `ckpt` unless a big canvas was checkpointed less than [`MIN_INTERVAL`] ago
    /// (`force`: write anyway, at the end of a pass).
    pub fn write(&self, ckpt: &Checkpoint, force: bool) -> Result<()> {
        let big = ckpt.state.latents.elem_count() * 4 > BIG_LATENTS;
        let recent = self.last.get().is_some_and(|t| t.elapsed() < MIN_INTERVAL);
        if big && recent && !force {
            return Ok(());
        }
        save(&self.path, ckpt, &self.fingerprint)?;
        self.last.set(Some(Instant::now()));
        Ok(())
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The render is complete: its checkpoint goes.
    pub fn finish(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", self.path.display()), e))
            }
            _ => Ok(()),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    format: u32,
    fingerprint: String,
    phase: String,
    next: usize,
    history: usize,
    /// The ChaCha word position as decimal text (JSON numbers stop at 2^53).
    noise_word_pos: String,
    /// The pending Box–Muller value's f64 bits.
    noise_spare: Option<u64>,
}

fn save(path: &Path, c: &Checkpoint, fingerprint: &str) -> Result<()> {
    let s = &c.state;
    let meta = Meta {
        format: FORMAT,
        fingerprint: fingerprint.to_string(),
        phase: c.phase.name().to_string(),
        next: s.next,
        history: s.history.len(),
        noise_word_pos: s.noise.word_pos.to_string(),
        noise_spare: s.noise.spare.map(f64::to_bits),
    };
    let json = serde_json::to_vec(&meta).map_err(|e| Error::Other(e.to_string()))?;
    let meta = Tensor::from_vec(json.clone(), json.len(), &host())?;
    let host_f32 =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&host())?.to_dtype(DType::F32)?) };
    let mut owned = vec![
        ("meta".to_string(), meta),
        ("latents".to_string(), host_f32(&s.latents)?),
    ];
    for (i, h) in s.history.iter().enumerate() {
        owned.push((format!("history.{i}"), host_f32(h)?));
    }
    if let Some(g) = &c.guide {
        owned.push(("guide".to_string(), host_f32(g)?));
    }
    let named: Vec<(&str, &Tensor)> = owned.iter().map(|(k, t)| (k.as_str(), t)).collect();
    crate::output::save_tensors(path, &named)
}

/// The checkpoint at `path`, if there is one. `Err` (bad input, exit 2) when it exists but
/// belongs to another render (`fingerprint` differs) or cannot be read.
pub fn load(path: &Path, fingerprint: &str) -> Result<Option<Checkpoint>> {
    if !path.exists() {
        return Ok(None);
    }
    let refuse = |what: String| {
        Error::input(
            path,
            None,
            what,
            "delete the checkpoint to start this render over, or resume with the spec, flags, \
             model and tessera version that made it",
        )
    };
    let mut t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &host())
        .map_err(|e| refuse(format!("unreadable checkpoint: {e}")))?;
    let meta: Meta = t
        .get("meta")
        .and_then(|m| m.to_vec1::<u8>().ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refuse("not a tessera checkpoint (no readable `meta`)".into()))?;
    if meta.format != FORMAT {
        return Err(refuse(format!("checkpoint format {}", meta.format)));
    }
    if meta.fingerprint != fingerprint {
        return Err(refuse(
            "the checkpoint belongs to a different render: the resolved spec, the model files \
             or the tessera version changed since it was written"
                .into(),
        ));
    }
    let phase = match meta.phase.as_str() {
        "guide" => Phase::Guide,
        "canvas" => Phase::Canvas,
        "decode" => Phase::Decode,
        other => return Err(refuse(format!("unknown phase {other:?}"))),
    };
    let mut take = |name: &str| {
        t.remove(name)
            .ok_or_else(|| refuse(format!("the checkpoint lacks `{name}`")))
    };
    let latents = take("latents")?;
    let history = (0..meta.history)
        .map(|i| take(&format!("history.{i}")))
        .collect::<Result<Vec<_>>>()?;
    let word_pos = meta
        .noise_word_pos
        .parse()
        .map_err(|_| refuse("bad noise position".into()))?;
    let guide = t.remove("guide");
    Ok(Some(Checkpoint {
        phase,
        state: PassState {
            next: meta.next,
            latents,
            history,
            noise: NoiseState {
                word_pos,
                spare: meta.noise_spare.map(f64::from_bits),
            },
        },
        guide,
    }))
}

/// A fingerprint of what determines a render's bytes: the resolved spec (as written into the
/// PNG), the contents of the files it reads (initial noise, images) and of the model, and the
/// tessera version.
pub fn fingerprint(resolved_spec: &str, inputs: &[&Path], model: &Path) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("tessera {}\n", env!("CARGO_PKG_VERSION")));
    h.update(resolved_spec.as_bytes());
    for path in inputs {
        hash_file(&mut h, path, Path::new(""), u64::MAX)?;
    }
    let mut files = Vec::new();
    walk(model, &mut files)?;
    files.sort();
    for path in &files {
        let rel = path.strip_prefix(model).unwrap_or(path);
        hash_file(&mut h, path, rel, SAMPLED_ABOVE)?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Model files larger than this (weights) are sampled, not read whole: their first MiB (the
/// safetensors header: names, dtypes, shapes, offsets) and [`SAMPLES`] 64 KiB blocks spread
/// over the rest, with their size. Content, not mtimes, so a model copied to another machine
/// of a cluster still matches; constant cost (about 1.5 MiB read per weight file instead of
/// gigabytes) while a fine-tune of the same architecture still differs in every sampled block.
pub const SAMPLED_ABOVE: u64 = 4 << 20;
const SAMPLES: u64 = 8;
const BLOCK: u64 = 64 << 10;

fn hash_file(h: &mut Sha256, path: &Path, name: &Path, sampled_above: u64) -> Result<()> {
    let io = |e| Error::io(format!("reading {} for the checkpoint", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    h.update(format!("{}\0{size}\0", name.display()));
    let mut read_at = |offset: u64, len: u64| -> Result<()> {
        let mut buf = Vec::with_capacity(len as usize);
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        (&mut f).take(len).read_to_end(&mut buf).map_err(io)?;
        h.update(&buf);
        Ok(())
    };
    if size <= sampled_above {
        return read_at(0, size);
    }
    read_at(0, 1 << 20)?;
    for i in 1..=SAMPLES {
        read_at((size - BLOCK) / SAMPLES * i, BLOCK)?;
    }
    Ok(())
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e| Error::io(format!("listing {}", path.display()), e);
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        match p.is_dir() {
            true => walk(&p, out)?,
            false => out.push(p),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_bit_exactly_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("poster.png");
        let latents = Tensor::new(&[[0.1f32, -3.5e-8, f32::MIN_POSITIVE]], &host()).unwrap();
        let ckpt = Checkpoint {
            phase: Phase::Canvas,
            state: PassState {
                next: 3,
                latents: latents.clone(),
                history: vec![(&latents * 2.0).unwrap()],
                noise: NoiseState {
                    word_pos: u128::MAX - 5,
                    spare: Some(-0.123456789012345),
                },
            },
            guide: Some(latents.clone()),
        };
        let w = Writer::new(&out, "abc".into());
        w.write(&ckpt, false).unwrap();
        let back = load(&w.path, "abc").unwrap().unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(back.phase, Phase::Canvas);
        assert_eq!(back.state.next, 3);
        assert_eq!(back.state.noise, ckpt.state.noise);
        assert_eq!(bits(&back.state.latents), bits(&latents));
        assert_eq!(bits(&back.state.history[0]), bits(&ckpt.state.history[0]));
        assert_eq!(bits(back.guide.as_ref().unwrap()), bits(&latents));
        let e = load(&w.path, "other").err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("different render"), "{e}");
        w.finish().unwrap();
        assert!(load(&w.path, "abc").unwrap().is_none());
    }

    #[test]
    fn big_canvases_are_checkpointed_at_most_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let big = Tensor::zeros(BIG_LATENTS / 4 + 1, DType::F32, &host()).unwrap();
        let at = |next| Checkpoint {
            phase: Phase::Canvas,
            state: PassState {
                next,
                latents: big.clone(),
                history: Vec::new(),
                noise: NoiseState::default(),
            },
            guide: None,
        };
        let w = Writer::new(&dir.path().join("big.png"), "f".into());
        let next = || load(&w.path, "f").unwrap().unwrap().state.next;
        w.write(&at(1), false).unwrap();
        w.write(&at(2), false).unwrap();
        assert_eq!(
            next(),
            1,
            "a big canvas was checkpointed twice within the interval"
        );
        w.write(&at(3), true).unwrap();
        assert_eq!(next(), 3, "a forced checkpoint (end of a pass) was skipped");
    }

    #[test]
    fn fingerprint_sees_content_changes_in_sampled_weights() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("unet.safetensors");
        let mut bytes = vec![0u8; (SAMPLED_ABOVE + (3 << 20)) as usize];
        std::fs::write(&weights, &bytes).unwrap();
        let a = fingerprint("spec", &[], dir.path()).unwrap();
        assert_eq!(a, fingerprint("spec", &[], dir.path()).unwrap());
        assert_ne!(a, fingerprint("spec2", &[], dir.path()).unwrap());
        // A change inside a sampled block of the data (not the header) is seen.
        let size = bytes.len() as u64;
        bytes[((size - BLOCK) / SAMPLES * 4 + 7) as usize] = 1;
        std::fs::write(&weights, &bytes).unwrap();
        assert_ne!(a, fingerprint("spec", &[], dir.path()).unwrap());
    }
}
