//! The Wan2.1 diffusion transformer.
