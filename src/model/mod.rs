//! Models, written once against the tensor ops.

pub mod dit;
pub mod t5;
pub mod vae;
