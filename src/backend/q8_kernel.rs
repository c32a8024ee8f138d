//! Which kernel computes the 8-bit attention on a CUDA device ([`Q8Kernel`]): decided from the
//! device's compute capability, the head dim and [`Q8_KERNEL_ENV`]; plain logic, in every build
//! (`crate::backend::cuda::ops::q8_kernel` asks it for a device).

use crate::error::{Error, Result};

/// The environment variable that picks the 8-bit attention kernel: `mma` forces the mma.sync
/// kernel on sm_90 too (for A/B comparisons); unset, empty or `auto` picks by device.
pub const Q8_KERNEL_ENV: &str = "WANRT_Q8_KERNEL";

/// A kernel of the 8-bit attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Kernel {
    /// `kernels/attention_q8.cu`: mma.sync, every GPU (sm_80 and newer), head_dim 64 and 128;
    /// the scheme `Q8Path::Sm80` (64-key tiles).
    MmaSync,
    /// `kernels/attention_q8_sm90.cu`: wgmma, TMA and warp specialisation, sm_90 (H100, H200),
    /// head_dim 128; the scheme `Q8Path::Sm90` (128-key tiles).
    Wgmma,
}

impl Q8Kernel {
    /// `sm80-mma` or `sm90-wgmma`, for logs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::MmaSync => "sm80-mma",
            Q8Kernel::Wgmma => "sm90-wgmma",
        }
    }

    /// The kernel for a device of compute capability `capability` at `head_dim`, given the value
    /// of [`Q8_KERNEL_ENV`]: wgmma on 9.0 at head_dim 128 unless the variable says `mma`,
    /// mma.sync everywhere else (sm_100 and newer run no sm_90a code). Another value of the
    /// variable is [`Error::InvalidArgument`].
    pub fn select(capability: (i32, i32), head_dim: usize, env: Option<&str>) -> Result<Q8Kernel> {
        let forced_mma = match env.map(str::trim) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("auto") => false,
            Some(v) if v.eq_ignore_ascii_case("mma") => true,
            Some(v) => {
                return Err(Error::InvalidArgument(format!(
                    "{Q8_KERNEL_ENV}={v}: expected auto or mma"
                )))
            }
        };
        Ok(if capability == (9, 0) && head_dim == 128 && !forced_mma {
            Q8Kernel::Wgmma
        } else {
            Q8Kernel::MmaSync
        })
    }

    /// [`Q8Kernel::select`] with the variable read from the environment.
    pub fn for_device(capability: (i32, i32), head_dim: usize) -> Result<Q8Kernel> {
        let env = std::env::var(Q8_KERNEL_ENV).ok();
        Q8Kernel::select(capability, head_dim, env.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgmma_on_sm90_at_head_dim_128_unless_forced() {
        let pick = |cc, d, env| Q8Kernel::select(cc, d, env).unwrap();
        assert_eq!(pick((9, 0), 128, None), Q8Kernel::Wgmma);
        assert_eq!(pick((9, 0), 128, Some("auto")), Q8Kernel::Wgmma);
        assert_eq!(pick((9, 0), 128, Some("")), Q8Kernel::Wgmma);
        assert_eq!(pick((9, 0), 128, Some(" MMA ")), Q8Kernel::MmaSync);
        assert_eq!(pick((9, 0), 64, None), Q8Kernel::MmaSync);
        for cc in [(8, 0), (8, 6), (8, 9), (10, 0), (12, 0)] {
            assert_eq!(pick(cc, 128, None), Q8Kernel::MmaSync, "{cc:?}");
        }
        assert!(matches!(
            Q8Kernel::select((9, 0), 128, Some("wgmma2")),
            Err(Error::InvalidArgument(_))
        ));
        assert_ne!(Q8Kernel::MmaSync.name(), Q8Kernel::Wgmma.name());
    }
}
