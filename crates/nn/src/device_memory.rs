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
    Some(
        rt.device
            .as_cuda_device()
            .ok()?
            .cuda_stream()
            .context()
            .clone(),
    )
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
