//! CPU kernels: conv (to be written).
