//! Changing a DiT's parameters where they live (LoRAs re-merged on a CUDA device one block at a
//! time, [`crate::lora::DeviceMerge`]): a resident block's as they are, a swapped block's copied
//! to the device for the change and back to its pinned host memory after.

use super::weights::{update_checked, with_table, ParamUpdate};
use super::WanDit;
use crate::error::{Error, Result};

impl WanDit {
    /// Runs `update` on the parameters of block `block` (`None`: every parameter outside the
    /// blocks), named as in a checkpoint (`blocks.3.ffn.0.weight`, `head.modulation`; the
    /// modulations as the f32 tables the model computes with), where they live: a resident
    /// block's as they are, a swapped block's copied to the device for it and its pinned host
    /// bytes and scales overwritten after. Fails on a block index out of range and when
    /// `update` fails or changes a parameter's dtype, shape or device (see [`ParamUpdate`]).
    /// Text contexts with cached K/V must be prepared again after a change.
    pub fn update_params(
        &mut self,
        block: Option<usize>,
        update: &mut ParamUpdate<'_>,
    ) -> Result<()> {
        let Some(index) = block else {
            return self.update_outside_blocks(update);
        };
        let resident = self.blocks.len();
        if let Some(b) = self.blocks.get_mut(index) {
            return b.update(index, update);
        }
        match &mut self.swapped {
            Some(s) if index < self.cfg.num_layers => s.update(index - resident, index, update),
            _ => Err(Error::InvalidArgument(format!(
                "block {index} of a model with {} blocks",
                self.cfg.num_layers
            ))),
        }
    }

    /// [`WanDit::update_params`] outside the blocks.
    fn update_outside_blocks(&mut self, update: &mut ParamUpdate<'_>) -> Result<()> {
        with_table(&mut self.head_modulation, |modulation| {
            let mut params = vec![
                ("patch_embedding.weight".to_string(), &mut self.patch_w),
                ("patch_embedding.bias".to_string(), &mut self.patch_b),
            ];
            for (prefix, l) in [
                ("text_embedding.0", &mut self.text0),
                ("text_embedding.2", &mut self.text2),
                ("time_embedding.0", &mut self.time0),
                ("time_embedding.2", &mut self.time2),
                ("time_projection.1", &mut self.time_proj),
                ("head.head", &mut self.head),
            ] {
                l.params(prefix, &mut params);
            }
            params.push(("head.modulation".to_string(), modulation));
            update_checked(&mut params, update)
        })
    }
}
