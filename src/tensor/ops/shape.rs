//! Tensor ops: shape (to be written).
