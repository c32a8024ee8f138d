//! CPU kernels: norm (to be written).
