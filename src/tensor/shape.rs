//! Tensor shapes.

use crate::error::{Error, Result};

/// The dimensions of a tensor, outermost first. Tensors are always contiguous (row-major), so a
/// shape fully describes the layout.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions, rejecting element counts that overflow `usize`.
    pub fn new(dims: impl Into<Vec<usize>>) -> Result<Shape> {
        let dims = dims.into();
        checked_product(&dims).ok_or_else(|| Error::ShapeOverflow(dims.clone()))?;
        Ok(Shape(dims))
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar). Never overflows: checked on construction.
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// The size of dimension `d`, or an error naming `op` when `d` is out of range.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.0.get(d).copied().ok_or_else(|| {
            Error::InvalidArgument(format!("dimension {d} out of range for shape {self:?}"))
        })
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
}

/// The product of `dims`, or `None` on overflow.
pub fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    /// Panics only if the element count overflows; use [`Shape::new`] for untrusted dims.
    fn from(dims: &[usize]) -> Shape {
        Shape::new(dims.to_vec()).expect("shape overflow")
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    /// Panics only if the element count overflows; use [`Shape::new`] for untrusted dims.
    fn from(dims: [usize; N]) -> Shape {
        Shape::new(dims.to_vec()).expect("shape overflow")
    }
}
