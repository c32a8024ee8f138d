//! CPU kernels: reduce (to be written).
