//! CPU kernels: shape (to be written).
