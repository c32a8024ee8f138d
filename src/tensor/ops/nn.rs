//! Tensor ops: nn (to be written).
