//! How a store on the host keeps its values: `(c, h, w)` planes, the first channels in RAM and
//! the rest in an unlinked file, as f32 or bf16 ([`Kept`]); bands are read and written one
//! task per channel, file reads on their own threads ([`readers`]).

use candle_core::Result;
use rayon::prelude::*;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

fn io(e: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("tiled VAE scratch file: {e}"))
}

/// A file of `bytes` for the channels of a store beyond its RAM, in `TESSERA_TMPDIR` (else the
/// system's temporary folder).
pub(super) fn scratch_file(bytes: u64) -> Result<File> {
    let dir = std::env::var_os("TESSERA_TMPDIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".tessera-vae-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    // Unlinked at once: the space is freed when the store is dropped, even on a crash.
    std::fs::remove_file(&path).map_err(io)?;
    file.set_len(bytes).map_err(io)?;
    no_read_ahead(&file);
    Ok(file)
}

/// Reads ask for exactly the rows of a band, channel by channel: read-ahead past them only
/// fills a tight page cache (a memory cgroup) with rows evicted before their band comes.
fn no_read_ahead(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor; it changes no data.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// A value as a host store keeps it.
pub(super) trait Kept: bytemuck::Pod + Send + Sync {
    /// `src` as kept, into `dst` (as long).
    fn keep(src: &[f32], dst: &mut [Self]);
    /// `src` back as f32, into `dst` (as long).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// Kept as they are (f32): a file is read into and written from the values themselves,
    /// with no buffer and copy between.
    const AS_IS: bool;
}

impl Kept for f32 {
    const AS_IS: bool = true;
    fn keep(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
}

/// bf16 bits, rounded to nearest (ties to even).
impl Kept for u16 {
    const AS_IS: bool = false;
    fn keep(src: &[f32], dst: &mut [u16]) {
        crate::kernels::bf16::round_into(src, dst)
    }
    fn widen(src: &[u16], dst: &mut [f32]) {
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &b)| *d = f32::from_bits(u32::from(b) << 16));
    }
}

/// Rows `y..y + rows` of every channel from `src` (`(c, rows, w)`) into a host store of `(h, w)`
/// planes whose first `in_ram` channels are `ram`.
pub(super) fn write_host<K: Kept>(
    ram: &mut [f32],
    in_ram: usize,
    file: &Option<File>,
    (h, w): (usize, usize),
    y: usize,
    rows: usize,
    src: &[f32],
) -> Result<()> {
    let (n, plane) = (rows * w, h * w);
    let (to_ram, to_file) = src.split_at(in_ram * n);
    let ram: &mut [K] = &mut bytemuck::cast_slice_mut(ram)[..in_ram * plane];
    ram.par_chunks_mut(plane)
        .zip(to_ram.par_chunks_exact(n))
        .for_each(|(dst, values)| K::keep(values, &mut dst[y * w..][..n]));
    let Some(file) = file else { return Ok(()) };
    to_file
        .par_chunks_exact(n)
        .enumerate()
        .try_for_each(|(ch, values)| {
            let at = ((ch * h + y) * w * size_of::<K>()) as u64;
            if K::AS_IS {
                return file
                    .write_all_at(bytemuck::cast_slice(values), at)
                    .map_err(io);
            }
            let mut kept = vec![K::zeroed(); n];
            K::keep(values, &mut kept);
            file.write_all_at(bytemuck::cast_slice(&kept), at)
                .map_err(io)
        })
}

/// Rows `rows` of every channel of a host store (see [`write_host`]) into `out` (`(c, n, w)`).
pub(super) fn read_host<K: Kept>(
    ram: &[f32],
    in_ram: usize,
    file: &Option<File>,
    (h, w): (usize, usize),
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<()> {
    let (n, plane) = (rows.len() * w, h * w);
    let (from_ram, from_file) = out.split_at_mut(in_ram * n);
    let ram: &[K] = &bytemuck::cast_slice(ram)[..in_ram * plane];
    from_ram
        .par_chunks_mut(n)
        .zip(ram.par_chunks(plane))
        .for_each(|(o, kept)| K::widen(&kept[rows.start * w..][..n], o));
    let Some(file) = file else { return Ok(()) };
    let mut read = || {
        from_file
            .par_chunks_exact_mut(n)
            .enumerate()
            .try_for_each(|(ch, o)| {
                let at = ((ch * h + rows.start) * w * size_of::<K>()) as u64;
                if K::AS_IS {
                    return file
                        .read_exact_at(bytemuck::cast_slice_mut(o), at)
                        .map_err(io);
                }
                let mut kept = vec![K::zeroed(); n];
                file.read_exact_at(bytemuck::cast_slice_mut(&mut kept), at)
                    .map_err(io)?;
                K::widen(&kept, o);
                Ok(())
            })
    };
    match readers() {
        Some(pool) => pool.install(read),
        None => read(),
    }
}

/// The threads that read store files: more reads in flight than there are cores, since a
/// read of rows evicted from the page cache waits on the disk, not on a core (`perf`: three
/// quarters of the compute threads' sleeps were in `pread`). A 1024² f32 decode with every
/// store in files in a 500 MiB cgroup (2-core EPYC, virtio disk): 67.1-69.6 s with the two
/// compute threads reading, 58.2-58.8 s with 16 readers (8: 59.3 s), peak RSS +6 MiB. Tried
/// and left: reading the next band while one computes (no gain without these readers, and a
/// band's memory more: killed at 500 MiB with them), the kernel's read-ahead of the next band
/// (`POSIX_FADV_WILLNEED`: in a tight cgroup its rows were evicted before their band came, 45%
/// more read from disk) and `O_DIRECT` (no page cache at all: 86-91 s).
/// `None` where the threads could not be started: the compute threads read, as before.
fn readers() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(READERS)
            .thread_name(|i| format!("tessera-store-reader-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

const READERS: usize = 16;
