//! Models, written once against the tensor ops.

pub mod dit;
pub mod vae;
