//! CPU kernels: linear (to be written).
