//! Pushing chunks of frames through a layer list.

use super::layers::{dims5, Layer, LayerState};
use crate::error::Result;
use crate::tensor::Tensor;

/// A layer list with its causal state: chunks of consecutive frames go in, chunks of output
/// frames come out through a sink as soon as they are complete.
pub(super) struct Stream<'a> {
    layers: &'a [Layer],
    states: Vec<LayerState>,
    /// Chunks longer than this are split before the next layer, which bounds the activations
    /// held at once (1: one frame at a time; `usize::MAX`: the whole-sequence form).
    max_frames: usize,
}

impl<'a> Stream<'a> {
    pub fn new(layers: &'a [Layer], max_frames: usize) -> Stream<'a> {
        Stream {
            layers,
            states: layers.iter().map(|_| LayerState::default()).collect(),
            max_frames: max_frames.max(1),
        }
    }

    /// Runs the next chunk `x` `[B, C, n, H, W]` through every layer.
    pub fn push(&mut self, x: Tensor, sink: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
        self.push_from(0, x, sink)
    }

    fn push_from(
        &mut self,
        from: usize,
        mut x: Tensor,
        sink: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        for i in from..self.layers.len() {
            let t = dims5(&x)?[2];
            if t > self.max_frames {
                // A layer multiplied the frames (upsample3d): go on one piece at a time.
                for s in (0..t).step_by(self.max_frames) {
                    let piece = x.narrow(2, s, self.max_frames.min(t - s))?;
                    self.push_from(i, piece, sink)?;
                }
                return Ok(());
            }
            match self.layers[i].step(x, &mut self.states[i])? {
                Some(y) => x = y,
                None => return Ok(()),
            }
        }
        sink(x)
    }
}
