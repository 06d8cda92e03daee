//! The runtime: which device tensors live on and which dtype each component computes in.
//! Every rule about precision lives here, so the networks, the engine and the render never
//! decide it themselves.

use candle_core::{DType, Device, Result, Tensor};
use tessera_core::choices::{DeviceChoice, Precision};

/// Where host data lives: noise is drawn here (portable seeds) and pictures are read here, then
/// moved to the runtime's device once.
pub fn host() -> Device {
    Device::Cpu
}

fn open_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cuda(n) => Device::new_cuda(n),
        DeviceChoice::Metal => Device::new_metal(0),
        DeviceChoice::Cpu | DeviceChoice::Auto => Ok(host()),
    }
}

/// The candle dtype of a precision.
pub fn dtype(p: Precision) -> DType {
    match p {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
        Precision::BF16 => DType::BF16,
    }
}

/// The dtype a network whose weights are `weights` computes in on `device`: the CPU's kernels
/// compute in f32 whatever the weights are stored in.
pub fn compute_dtype(device: &Device, weights: DType) -> DType {
    match device.is_cpu() {
        true => DType::F32,
        false => weights,
    }
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub device: Device,
    /// The precision the user asked for.
    pub precision: Precision,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: host(),
            precision: Precision::F32,
        }
    }
}

/// Why a device asked for cannot be had, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUnavailable {
    pub message: String,
    pub fix: String,
}

/// Whether this build has a backend: candle compiles one only with its feature.
fn built_with(choice: DeviceChoice) -> bool {
    match choice {
        DeviceChoice::Cuda(_) => cfg!(feature = "cuda"),
        DeviceChoice::Metal => cfg!(feature = "metal"),
        DeviceChoice::Cpu | DeviceChoice::Auto => true,
    }
}

impl Runtime {
    pub fn new(device: Device, precision: Precision) -> Self {
        Self { device, precision }
    }

    /// The device a user asked for: `Auto` is the first GPU this build supports and the
    /// machine has, else the CPU.
    pub fn open(
        choice: DeviceChoice,
        precision: Precision,
    ) -> std::result::Result<Self, DeviceUnavailable> {
        let device = match choice {
            DeviceChoice::Cpu => host(),
            DeviceChoice::Auto => [DeviceChoice::Cuda(0), DeviceChoice::Metal]
                .into_iter()
                .filter(|&c| built_with(c))
                .find_map(|c| open_device(c).ok())
                .unwrap_or_else(host),
            gpu if !built_with(gpu) => {
                let feature = if gpu == DeviceChoice::Metal {
                    "metal"
                } else {
                    "cuda"
                };
                return Err(DeviceUnavailable {
                    message: format!("this build of tessera has no {feature} support"),
                    fix: format!(
                        "rebuild with `cargo build --release --features {feature}` (README: GPUs), \
                         or use --device cpu"
                    ),
                });
            }
            gpu => open_device(gpu).map_err(|e| DeviceUnavailable {
                // candle appends a backtrace to device errors: the first line says it all.
                message: format!(
                    "cannot open device {}: {}",
                    gpu.name(),
                    e.to_string().lines().next().unwrap_or_default()
                ),
                fix:
                    "check the GPU's driver and index (nvidia-smi lists them), or use --device cpu"
                        .into(),
            })?,
        };
        Ok(Self { device, precision })
    }

    /// The device's name for reports: `cpu`, `cuda:0`, `metal:0`.
    pub fn device_name(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    /// The same device at another precision.
    pub fn with_precision(&self, precision: Precision) -> Self {
        Self {
            device: self.device.clone(),
            precision,
        }
    }

    /// The text encoder's dtype: the one asked for (it has no convolutions).
    pub fn text_dtype(&self) -> DType {
        dtype(self.precision)
    }

    /// The dtype the UNet's weights are stored in: the one asked for, on every device.
    pub fn conv_weight_dtype(&self) -> DType {
        dtype(self.precision)
    }

    /// The dtype the convolutional networks (UNet, VAE) compute in: on a GPU the one asked
    /// for; on the CPU f32, tessera's kernels being f32 (half-precision weights are widened
    /// per layer as they are used).
    pub fn conv_dtype(&self) -> DType {
        compute_dtype(&self.device, self.conv_weight_dtype())
    }

    /// A line for the user when the convolutional networks compute in another dtype than asked.
    pub fn conv_note(&self) -> Option<String> {
        (self.conv_dtype() != self.conv_weight_dtype()).then(|| match self.bf16_kernels() {
            true => "note: on this CPU (AVX512_BF16) the UNet's convolutions, linear layers and \
                     self-attention and the VAE's convolutions and attention multiply in bf16 \
                     with f32 sums; activations, norms and softmax stay f32"
                .to_string(),
            false => format!(
                "note: on the CPU the UNet keeps its weights in {} and computes in f32",
                self.precision.name()
            ),
        })
    }

    /// The VAE's dtype: f32 for VAEs marked `force_upcast` (SD 1.x/2.x), as diffusers does,
    /// and on the CPU; else the precision asked for.
    pub fn vae_dtype(&self, force_upcast: bool) -> DType {
        match force_upcast {
            true => DType::F32,
            false => self.conv_dtype(),
        }
    }

    /// The dtype the VAE's weights are loaded in when it computes in f32: bf16 when bf16 was
    /// asked and this CPU runs the bf16 kernels (activations stay f32; diffusers upcasts only
    /// f16 VAEs, so it decodes a bf16 VAE in bf16 too), else f32.
    pub fn vae_f32_weight_dtype(&self) -> DType {
        match self.bf16_kernels() {
            true => DType::BF16,
            false => DType::F32,
        }
    }

    /// Whether bf16 was asked on a CPU that runs the bf16 kernels.
    fn bf16_kernels(&self) -> bool {
        self.device.is_cpu()
            && self.precision == Precision::BF16
            && crate::kernels::bf16::available()
    }

    /// A host tensor on the runtime's device (a no-op on the CPU).
    pub fn to_device(&self, t: &Tensor) -> Result<Tensor> {
        t.to_device(&self.device)
    }
}
