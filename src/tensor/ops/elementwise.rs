//! Tensor ops: elementwise (to be written).
