//! CPU kernels: elementwise (to be written).
