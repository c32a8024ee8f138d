//! Tensor ops: conv (to be written).
