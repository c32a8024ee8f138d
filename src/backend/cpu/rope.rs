//! CPU kernels: rope (to be written).
