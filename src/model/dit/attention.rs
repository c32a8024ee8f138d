//! How the DiT computes its self-attention: the user's choice (`--attention
//! auto|q8|q8-fp8|bf16`) and what a forward pass runs for it.

use std::str::FromStr;

use crate::backend::cpu::attention_q8::{Q8Path, Q8Scheme};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::ops::{attention, attention_q8, AttentionParams};
use crate::tensor::Tensor;

/// How the blocks compute their self-attention (the text cross-attention, 512 keys and about 1%
/// of a forward, is always exact).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SelfAttention {
    /// The backend's attention (f32 on the CPU).
    #[default]
    Exact,
    /// The 8-bit scheme of a GPU path, emulated on the CPU with the kernels' arithmetic
    /// ([`crate::backend::cpu::attention_q8`]): slow, for checking the scheme end to end.
    Q8(Q8Scheme),
}

/// The GPU path whose 8-bit scheme `q8` emulates on the CPU: sm_80's (INT8 Q·Kᵀ, fp16 P·V), the
/// arithmetic of the mma.sync kernel every GPU runs (`kernels/attention_q8.cu`); the sm_90a
/// wgmma kernel differs from it only in its key tile (`Q8Path::Sm90`, within
/// accumulation-order rounding), so the CPU checks what a GPU computes.
pub const CPU_Q8_PATH: Q8Path = Q8Path::Sm80;

/// The 8-bit scheme `q8` asks of a CUDA device: [`CPU_Q8_PATH`]'s, which the device runs in its
/// own kernel (on sm_90 at head_dim 128 the wgmma one, `Q8Path::Sm90`; see
/// `backend::cuda::ops::q8_kernel`).
pub const CUDA_Q8_PATH: Q8Path = CPU_Q8_PATH;

/// The attention a generation asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttentionChoice {
    /// The 8-bit kernel where the device has one, else the device's exact attention (the CPU
    /// has none: exact f32).
    #[default]
    Auto,
    /// The 8-bit scheme; on the CPU, its emulation ([`CPU_Q8_PATH`]), slow, for checking.
    Q8,
    /// 16-bit attention on a GPU; exact f32 on the CPU.
    Bf16,
    /// The 8-bit scheme with e4m3 P·V ([`Q8Path::Sm89`], SageAttention2's sm_89 arithmetic),
    /// only when asked for: its error against exact attention is about 3e-2 relative L2
    /// (cosine ≈ 0.9995), over the 1e-2 that [`AttentionChoice::Q8`] meets, so `auto` never
    /// picks it. On a GPU it needs sm_89 or sm_90 (an older one refuses it with
    /// [`Error::InvalidArgument`]); on the CPU it runs its emulation, slow, for checking.
    Q8Fp8,
}

impl AttentionChoice {
    /// Every choice.
    pub const ALL: [AttentionChoice; 4] = [
        AttentionChoice::Auto,
        AttentionChoice::Q8,
        AttentionChoice::Bf16,
        AttentionChoice::Q8Fp8,
    ];

    /// `auto`, `q8`, `bf16` or `q8-fp8`.
    pub fn name(self) -> &'static str {
        match self {
            AttentionChoice::Auto => "auto",
            AttentionChoice::Q8 => "q8",
            AttentionChoice::Bf16 => "bf16",
            AttentionChoice::Q8Fp8 => "q8-fp8",
        }
    }

    /// What the DiT's self-attention runs on the CPU for this choice.
    pub fn on_cpu(self) -> SelfAttention {
        match self {
            AttentionChoice::Auto | AttentionChoice::Bf16 => SelfAttention::Exact,
            AttentionChoice::Q8 => SelfAttention::Q8(Q8Scheme::for_path(CPU_Q8_PATH)),
            AttentionChoice::Q8Fp8 => SelfAttention::Q8(Q8Scheme::for_path(Q8Path::Sm89)),
        }
    }

    /// What the DiT's self-attention runs on a CUDA device for this choice: `auto` and `q8` the
    /// 8-bit kernel (every supported GPU, sm_80 and newer, has it), `bf16` the bf16 kernel,
    /// `q8-fp8` the e4m3 P·V kernel (sm_89 and sm_90; the same scheme as on the CPU).
    pub fn on_cuda(self) -> SelfAttention {
        match self {
            AttentionChoice::Auto | AttentionChoice::Q8 => {
                SelfAttention::Q8(Q8Scheme::for_path(CUDA_Q8_PATH))
            }
            AttentionChoice::Bf16 => SelfAttention::Exact,
            AttentionChoice::Q8Fp8 => self.on_cpu(),
        }
    }

    /// What the DiT's self-attention runs on `device` for this choice ([`Self::on_cpu`] or
    /// [`Self::on_cuda`]).
    pub fn on(self, device: Device) -> SelfAttention {
        match device {
            Device::Cpu => self.on_cpu(),
            Device::Cuda(_) => self.on_cuda(),
        }
    }
}

impl SelfAttention {
    /// A short description for generation metadata and logs: `exact` or `q8-sm80-emulated`
    /// (the path of a scheme not built by [`Q8Scheme::for_path`] is given as `q8-custom`).
    pub fn describe(&self) -> String {
        match self {
            SelfAttention::Exact => "exact".into(),
            SelfAttention::Q8(s) => {
                let path = Q8Path::ALL
                    .into_iter()
                    .find(|&p| Q8Scheme::for_path(p) == *s);
                format!("q8-{}-emulated", path.map_or("custom", Q8Path::name))
            }
        }
    }

    /// `softmax(scale · q kᵀ) v` through this attention, on q's device, unmasked and without a
    /// bias: q `[B, Sq, H, D]`, k and v `[B, Sk, H, D]`.
    pub fn apply(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
        match self {
            SelfAttention::Exact => {
                let p = AttentionParams {
                    scale,
                    kv_lens: None,
                    bias: None,
                };
                attention(q, k, v, &p)
            }
            SelfAttention::Q8(scheme) => attention_q8(q, k, v, scale, scheme),
        }
    }
}

impl FromStr for AttentionChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<AttentionChoice> {
        AttentionChoice::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown attention `{s}` (expected auto, q8, bf16 or q8-fp8)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_resolve_on_the_cpu() {
        for c in AttentionChoice::ALL {
            assert_eq!(c.name().parse::<AttentionChoice>().unwrap(), c);
        }
        assert!(matches!(
            "int8".parse::<AttentionChoice>(),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(AttentionChoice::Auto.on_cpu(), SelfAttention::Exact);
        assert_eq!(AttentionChoice::Bf16.on_cpu(), SelfAttention::Exact);
        assert_eq!(AttentionChoice::Q8.on_cpu().describe(), "q8-sm80-emulated");
        for c in [AttentionChoice::Auto, AttentionChoice::Q8] {
            assert_eq!(c.on_cuda(), AttentionChoice::Q8.on_cpu());
        }
        assert_eq!(AttentionChoice::Bf16.on_cuda(), SelfAttention::Exact);
        // q8-fp8: the sm89 scheme on both devices, never what auto picks.
        let fp8 = AttentionChoice::Q8Fp8;
        assert_eq!(fp8.on_cpu().describe(), "q8-sm89-emulated");
        assert_eq!(fp8.on_cuda(), fp8.on_cpu());
        assert_ne!(AttentionChoice::Auto.on_cuda(), fp8.on_cuda());
        let custom = Q8Scheme {
            tile_k: 32,
            ..Q8Scheme::for_path(Q8Path::Sm89)
        };
        assert_eq!(SelfAttention::Q8(custom).describe(), "q8-custom-emulated");
    }
}
