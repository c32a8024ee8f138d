//! Models, written once against the tensor ops.

pub mod dit;
<<<<<<< HEAD
pub mod t5;
=======
pub mod vae;
>>>>>>> vae
