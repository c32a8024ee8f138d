//! The op surface the models are written against. Each op checks dtypes and shapes, then
//! dispatches on the tensor's storage to a backend kernel. Activations are f32; weights are
//! [`super::Weight`]s in any stored dtype.

mod conv;
mod elementwise;
mod grad;
mod linalg;
mod nn;
mod shape;

pub use grad::{attention_backward, AttentionGrads};
pub use linalg::{attention, attention_q8, AttentionParams};
pub use nn::embedding;
pub use shape::cat;
