//! The names of what a user chooses: the sampler and the precision. Planning validates them
//! by these names; the engine maps them to its schedulers and dtypes.

use serde::{Deserialize, Serialize};

/// Default bytes of attention scores (and feed-forward hidden state) alive at once.
pub const DEFAULT_ATTENTION_BUDGET: usize = 256 << 20;

/// The schedulers tessera offers, by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPlusPlus2M,
    /// The same samplers on Karras et al.'s sigmas (diffusers' `use_karras_sigmas`).
    EulerKarras,
    EulerAncestralKarras,
    DpmPlusPlus2MKarras,
}

impl SchedulerKind {
    pub const NAMES: &'static [&'static str] = &[
        "ddim",
        "euler",
        "euler-a",
        "dpm++2m",
        "euler-karras",
        "euler-a-karras",
        "dpm++2m-karras",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "ddim" => Some(Self::Ddim),
            "euler" => Some(Self::Euler),
            "euler-a" | "euler_a" | "euler-ancestral" => Some(Self::EulerAncestral),
            "dpm++2m" | "dpmpp2m" | "dpm++" | "dpmpp" => Some(Self::DpmPlusPlus2M),
            "euler-karras" | "euler_karras" => Some(Self::EulerKarras),
            "euler-a-karras" | "euler_a_karras" => Some(Self::EulerAncestralKarras),
            "dpm++2m-karras" | "dpmpp2m-karras" | "dpmpp_2m_karras" => {
                Some(Self::DpmPlusPlus2MKarras)
            }
            _ => None,
        }
    }

    /// The scheduler a model folder asks for through its config's `_class_name`.
    pub fn from_class_name(class: &str) -> Option<Self> {
        match class {
            "DDIMScheduler" => Some(Self::Ddim),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            "DPMSolverMultistepScheduler" => Some(Self::DpmPlusPlus2M),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::DpmPlusPlus2M => "dpm++2m",
            Self::EulerKarras => "euler-karras",
            Self::EulerAncestralKarras => "euler-a-karras",
            Self::DpmPlusPlus2MKarras => "dpm++2m-karras",
        }
    }

    /// Whether the sampler walks Karras sigmas.
    pub fn karras(self) -> bool {
        matches!(
            self,
            Self::EulerKarras | Self::EulerAncestralKarras | Self::DpmPlusPlus2MKarras
        )
    }

    /// The same sampler on Karras sigmas (a folder config's `use_karras_sigmas`); DDIM has none.
    pub fn with_karras(self) -> Self {
        match self {
            Self::Euler => Self::EulerKarras,
            Self::EulerAncestral => Self::EulerAncestralKarras,
            Self::DpmPlusPlus2M => Self::DpmPlusPlus2MKarras,
            other => other,
        }
    }

    /// The sampler as AUTOMATIC1111 names it in a PNG's `parameters` (the classic one-field
    /// form, "DPM++ 2M Karras", which A1111 itself still parses into sampler and schedule).
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIM",
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::DpmPlusPlus2M => "DPM++ 2M",
            Self::EulerKarras => "Euler Karras",
            Self::EulerAncestralKarras => "Euler a Karras",
            Self::DpmPlusPlus2MKarras => "DPM++ 2M Karras",
        }
    }
}

/// The numeric precision a user asks for (`--dtype`). The runtime decides what each component
/// really computes in (see `tessera_nn::runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    #[default]
    F32,
    F16,
    BF16,
}

impl Precision {
    pub const NAMES: &'static [&'static str] = &["f32", "f16", "bf16"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" | "fp32" => Some(Self::F32),
            "f16" | "float16" | "fp16" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::BF16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// The device a user asks for (`--device`, `[canvas] device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeviceChoice {
    /// The first GPU this build supports and the machine has, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

impl DeviceChoice {
    pub const NAMES: &'static [&'static str] = &["auto", "cpu", "cuda", "cuda:N", "metal"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "cuda" | "gpu" => Some(Self::Cuda(0)),
            "metal" | "mps" => Some(Self::Metal),
            n => n.strip_prefix("cuda:")?.parse().ok().map(Self::Cuda),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Auto => "auto".into(),
            Self::Cpu => "cpu".into(),
            Self::Cuda(n) => format!("cuda:{n}"),
            Self::Metal => "metal".into(),
        }
    }
}
