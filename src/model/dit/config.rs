//! Temporary stand-in for the layout branch's `crate::io::config::DitConfig` (same fields).

/// Hyper-parameters of a Wan DiT (original Wan names).
#[derive(Debug, Clone, PartialEq)]
pub struct DitConfig {
    /// Hidden width.
    pub dim: usize,
    /// FFN hidden width.
    pub ffn_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Latent channels in.
    pub in_dim: usize,
    /// Latent channels out.
    pub out_dim: usize,
    /// Text-encoder width.
    pub text_dim: usize,
    /// Sinusoidal time-embedding width.
    pub freq_dim: usize,
    /// Text slots the context is padded to.
    pub text_len: usize,
    /// Norm epsilon.
    pub eps: f32,
    /// Patch size (t, h, w).
    pub patch_size: [usize; 3],
}
