//! Device memory as the GPU's driver counts it, for the render report: candle keeps no
//! allocation counters, so a watcher thread samples the driver's free/total figure every
//! millisecond during a phase and keeps the highest use. The figure covers every user of the
//! GPU, the CUDA context included (as `nvidia-smi` shows it), not only tessera's tensors.

use crate::Runtime;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A running watch; [`DeviceMemoryWatch::finish`] stops it and gives the peak in bytes.
pub struct DeviceMemoryWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl DeviceMemoryWatch {
    /// Start watching the runtime's device; `None` on the CPU (and on Metal, which has no such
    /// counter in candle) or where the driver cannot be asked.
    pub fn start(rt: &Runtime) -> Option<Self> {
        let used = used_bytes_fn(rt)?;
        used()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vram-watch".into())
            .spawn(move || {
                let mut peak = 0;
                loop {
                    peak = peak.max(used().unwrap_or(0));
                    if flag.load(Ordering::Relaxed) {
                        return peak;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the watch: the highest device memory in use seen, in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for DeviceMemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The device memory free now as the driver counts it: `None` on the CPU, `Some(0)` where a
/// GPU cannot say (Metal).
pub fn free_bytes(rt: &Runtime) -> Option<u64> {
    if rt.device.is_cpu() {
        return None;
    }
    Some(free_now(rt).unwrap_or(0))
}

/// The CUDA context of the runtime's device, which the driver is asked about.
#[cfg(feature = "cuda")]
fn cuda_context(
    rt: &Runtime,
) -> Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>> {
    device_context(&rt.device)
}

#[cfg(feature = "cuda")]
fn device_context(
    device: &candle_core::Device,
) -> Option<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>> {
    Some(
        device
            .as_cuda_device()
            .ok()?
            .cuda_stream()
            .context()
            .clone(),
    )
}

/// Give the device memory that freed tensors leave in the driver's pool back to the device,
/// so that it counts neither against this process's peak nor against other users of the GPU.
///
/// Why it is needed: candle allocates from CUDA's stream-ordered pool, whose freed memory is
/// released only at a stream, event or context *synchronisation*; candle's ops never synchronise
/// (its reads back to the host are blocking copies, which do not count; only an explicit
/// `Device::synchronize` does, which a render never called), so without this the
/// pool keeps the high-water mark of the whole run (seen on an H200: a budgeted render stayed
/// at its first phase's peak through every later phase). No-op on the CPU and on Metal.
pub fn release_freed(device: &candle_core::Device) {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        use candle_core::cuda_backend::cudarc::driver::result;
        let stream = cuda.cuda_stream();
        // Errors here only mean the memory stays pooled: nothing to report.
        if stream.synchronize().is_ok() {
            let dev = stream.context().cu_device();
            // SAFETY: `dev` is the live context's device; trimming releases only unused blocks.
            unsafe {
                if let Ok(pool) = result::device::get_mem_pool(dev) {
                    let _ = result::mem_pool::trim_to(pool, 0);
                }
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// With `TESSERA_DEVICE_TRACE` set, print the device memory in use at `label()` (after
/// [`release_freed`]) and the device time since the previous trace point to stderr: where a
/// phase's device peak and time come from, step by step (the synchronisation makes each
/// interval the device's own work, not the queue's). Called per UNet layer, so without the
/// variable it costs one branch (the label is not built).
pub fn trace(device: &candle_core::Device, label: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    if device.is_cpu() || !*ON.get_or_init(|| std::env::var_os("TESSERA_DEVICE_TRACE").is_some()) {
        return;
    }
    release_freed(device);
    let now = std::time::Instant::now();
    let since = LAST
        .lock()
        .ok()
        .and_then(|mut last| last.replace(now))
        .map_or(0.0, |t| (now - t).as_secs_f64() * 1e3);
    #[cfg(feature = "cuda")]
    if let Some((free, total)) = device_context(device).and_then(|c| c.mem_get_info().ok()) {
        eprintln!(
            "device-trace {}: {} MiB in use, {since:.3} ms since the previous point",
            label(),
            (total - free) >> 20
        );
    }
    #[cfg(not(feature = "cuda"))]
    let _ = since;
    #[cfg(not(feature = "cuda"))]
    let _ = label;
}

#[cfg(feature = "cuda")]
fn free_now(rt: &Runtime) -> Option<u64> {
    let (free, _) = cuda_context(rt)?.mem_get_info().ok()?;
    Some(free as u64)
}

#[cfg(not(feature = "cuda"))]
fn free_now(_: &Runtime) -> Option<u64> {
    None
}

/// The device memory in use now as the driver counts it (every user of the GPU, the context
/// included): `None` on the CPU and where the driver cannot be asked.
pub fn used_bytes(rt: &Runtime) -> Option<u64> {
    used_bytes_fn(rt)?()
}

type UsedFn = Box<dyn Fn() -> Option<u64> + Send>;

#[cfg(feature = "cuda")]
fn used_bytes_fn(rt: &Runtime) -> Option<UsedFn> {
    let context = cuda_context(rt)?;
    Some(Box::new(move || {
        let (free, total) = context.mem_get_info().ok()?;
        Some((total - free) as u64)
    }))
}

#[cfg(not(feature = "cuda"))]
fn used_bytes_fn(_: &Runtime) -> Option<UsedFn> {
    None
}
