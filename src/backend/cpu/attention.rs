//! CPU kernels: attention (to be written).
