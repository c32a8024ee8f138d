//! The CPU backend: the reference implementation of every op, written for speed.
//!
//! Kernels work on f32 slices (activations are f32 on the CPU); weights of any stored dtype are
//! widened to f32 panel by panel inside the GEMM. Threads come from rayon. [`compute`] emulates
//! the CUDA backend's bf16 storage of activations (`WANRT_COMPUTE=bf16`).

pub mod attention;
pub mod attention_q8;
pub mod compute;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod gemm_bf16;
pub mod grad;
pub mod linear;
pub mod norm;
pub mod quant8;
pub mod reduce;
pub mod rope;
pub mod shape;
