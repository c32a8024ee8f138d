//! Tensor ops: linalg (to be written).
