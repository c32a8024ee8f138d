//! # wanrt
//!
//! Wan2.1 text-to-video generation (and LoRA fine-tuning) as an embeddable native library.
//!
//! The crate is organised bottom-up, one module per concern:
//! - [`tensor`]: dtypes (including fp8), shapes, host tensors that own their data or borrow it
//!   from a memory map, and the op surface the models are written against;
//! - [`backend`]: the devices behind the tensor ops (the CPU reference backend; CUDA behind the
//!   `cuda` feature);
//! - [`io`]: model files (safetensors, PyTorch `.pth`), key layouts and config inference;
//! - [`lora`]: LoRA files in every format, merged into the weights or applied on the fly;
//! - [`video`]: RGB8 frames to MP4 (H.264), PNG or GIF files that record the generation
//!   parameters;
//! - [`train`]: LoRA training of the DiT (the network, the flow-matching loss, the backward
//!   pass, musubi's dataset config);
//! - [`pipeline`]: text to video end to end (the safe API the CLI and the C ABI wrap);
//! - [`ffi`]: the C ABI (`include/wanrt.h`).
#![deny(missing_docs)]

pub mod backend;
pub mod error;
pub mod ffi;
pub mod io;
pub mod lora;
pub mod model;
pub mod pipeline;
pub mod sampler;
pub mod tensor;
pub mod train;
pub mod video;

pub use error::{Error, Result, Status};
pub use tensor::{DType, Shape, Tensor};
