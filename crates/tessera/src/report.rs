//! What a render measures of itself: process memory as the kernel sees it (Linux
//! `/proc/self/status`: resident set now and its peak, reset between phases to measure each
//! phase's own peak) and each phase's time, beside the plan's estimate.

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Peak resident set size (VmHWM) in bytes, 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// Current resident set size (VmRSS) in bytes, 0 where unavailable.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:").unwrap_or(0) * 1024
}

/// Reset the peak to the current RSS (writes 5 to `/proc/self/clear_refs`); false if refused.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Make the allocator hand large freed blocks back to the kernel at once. glibc serves blocks
/// below its (self-raising, up to 32 MiB) mmap threshold from the heap and keeps them after
/// they are freed, so a streamed UNet's layer-sized weights and activations would pile up in
/// RSS. A fixed 1 MiB threshold maps every tensor of note separately and unmaps it on free.
/// Every render sets it (fresh mappings cost page faults, which large buffers take as huge
/// pages where the kernel allows).
pub fn release_freed_memory_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; glibc documents it as thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Give the kernel back the heap pages freed so far: glibc keeps them (its mmap threshold grows
/// as large tensors are freed, so later ones come from the heap), and a phase's peak RSS would
/// then carry the weights of a model dropped before it (an SDXL decode measured 4.9 GiB for
/// 0.5 GiB of live data).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub use tessera_core::units::mib;

/// Peak RSS and wall time of each phase of a render.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseReport {
    pub phases: Vec<Phase>,
    /// The plan's estimate of each phase's peak, shown beside the measured one.
    pub estimate: Option<tessera_plan::budget::Estimate>,
    /// The GPU whose memory each phase also measures (`None`: the CPU).
    #[serde(skip)]
    pub device: Option<tessera_nn::Runtime>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub peak_rss_bytes: u64,
    /// Peak device memory in use during the phase as the driver counts it (GPU runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_bytes: Option<u64>,
}

impl PhaseReport {
    /// An empty report that will show `estimate` beside each measured phase.
    pub fn new(estimate: tessera_plan::budget::Estimate) -> Self {
        Self {
            phases: Vec::new(),
            estimate: Some(estimate),
            device: None,
        }
    }

    /// Also measure each phase's peak memory on `rt`'s device, when it is a GPU.
    pub fn on_device(mut self, rt: &tessera_nn::Runtime) -> Self {
        self.device = (!rt.device.is_cpu()).then(|| rt.clone());
        self
    }

    /// Run `f` as phase `name`: the peak is reset first, so it is this phase's own.
    pub fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> tessera_core::Result<T>,
    ) -> tessera_core::Result<T> {
        return_freed_memory();
        if let Some(rt) = &self.device {
            tessera_nn::device_memory::release_freed(&rt.device);
            tessera_nn::device_memory::trace(&rt.device, || format!("{name} starts"));
        }
        reset_peak();
        let watch = self
            .device
            .as_ref()
            .and_then(tessera_nn::device_memory::DeviceMemoryWatch::start);
        let start = std::time::Instant::now();
        let out = f()?;
        self.phases.push(Phase {
            name: name.to_string(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
            peak_device_bytes: watch.map(|w| w.finish()),
        });
        Ok(out)
    }

    pub fn peak(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| p.peak_rss_bytes)
            .max()
            .unwrap_or(0)
    }
}

impl std::fmt::Display for PhaseReport {
    /// On a GPU the estimate is of device memory (what `--max-memory` budgets there), so the
    /// ratio is the device peak's; on the CPU it is the RSS peak's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpu = self.phases.iter().any(|p| p.peak_device_bytes.is_some());
        let device_column = |text: String| {
            if gpu {
                format!(" {text:>12}")
            } else {
                String::new()
            }
        };
        writeln!(
            f,
            "{:<16} {:>9} {:>12}{} {:>12} {:>9}",
            "phase",
            "time",
            "peak RSS",
            device_column("device peak".into()),
            "estimate",
            "measured/estimate"
        )?;
        for p in &self.phases {
            let estimate = self.estimate.as_ref().and_then(|e| {
                e.phases()
                    .into_iter()
                    .find(|(name, _)| *name == p.name)
                    .map(|(_, bytes)| bytes)
            });
            let measured = p.peak_device_bytes.unwrap_or(p.peak_rss_bytes);
            let (est, ratio) = match estimate {
                Some(e) if e > 0 => (mib(e), format!("{:.2}", measured as f64 / e as f64)),
                _ => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<16} {:>8.1}s {:>12}{} {:>12} {:>9}",
                p.name,
                p.seconds,
                mib(p.peak_rss_bytes),
                device_column(p.peak_device_bytes.map(mib).unwrap_or_default()),
                est,
                ratio
            )?;
        }
        Ok(())
    }
}
