//! The order of one DiT forward with swapped blocks (`--blocks-to-swap N`, low-VRAM mode): the
//! last `N` blocks' weights live in pinned host memory and are copied into two device slots on
//! a side stream, each while the previous block computes; events order the two streams (a
//! block waits for its copy; a copy into a slot waits for the block that used the slot last).
//! Pure, so that which block is resident when is tested on any machine; the CUDA backend runs
//! it (`backend::cuda::BlockSwap`).

/// Device slots the swapped blocks rotate through: one computing, one being filled.
pub const SLOTS: usize = 2;

/// One step of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapStep {
    /// Copy block `block`'s weights into `slot` on the side stream, once block `after` (the
    /// slot's previous user in this forward, if any) has computed.
    Prefetch {
        /// The block copied.
        block: usize,
        /// The slot filled.
        slot: usize,
        /// The block whose compute must end first.
        after: Option<usize>,
    },
    /// Run block `block` from its resident weights (`slot: None`) or from `slot`, once the
    /// copy into it has ended.
    Compute {
        /// The block run.
        block: usize,
        /// Where its weights are.
        slot: Option<usize>,
    },
}

/// The steps of a forward through `blocks` blocks whose last `swapped` are swapped (`swapped`
/// is clamped to `blocks`): the first two swapped blocks are copied at the start (overlapping
/// the resident blocks), then after each swapped block computes, the block two further on is
/// copied into the slot it used (overlapping the next block).
pub fn schedule(blocks: usize, swapped: usize) -> Vec<SwapStep> {
    let first = blocks - swapped.min(blocks);
    let slot = |b: usize| (b - first) % SLOTS;
    let mut steps: Vec<SwapStep> = (first..blocks.min(first + SLOTS))
        .map(|block| SwapStep::Prefetch {
            block,
            slot: slot(block),
            after: None,
        })
        .collect();
    for block in 0..blocks {
        let swapped = block >= first;
        steps.push(SwapStep::Compute {
            block,
            slot: swapped.then(|| slot(block)),
        });
        if swapped && block + SLOTS < blocks {
            steps.push(SwapStep::Prefetch {
                block: block + SLOTS,
                slot: slot(block),
                after: Some(block),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a schedule: the blocks run in order, each swapped block from a slot holding it,
    /// each copy into a slot issued after its previous user ran (and naming it), and every
    /// swapped block but a forward's very first copied while another block computes.
    fn check(blocks: usize, swapped: usize) {
        let steps = schedule(blocks, swapped);
        let first = blocks - swapped.min(blocks);
        let mut held: [Option<usize>; SLOTS] = [None; SLOTS];
        let mut used: [Option<usize>; SLOTS] = [None; SLOTS];
        let mut computed = Vec::new();
        let mut copied_at = vec![None; blocks];
        for (i, step) in steps.iter().enumerate() {
            match *step {
                SwapStep::Prefetch { block, slot, after } => {
                    assert!(
                        block >= first,
                        "{blocks}/{swapped}: resident {block} copied"
                    );
                    assert_eq!(
                        after, used[slot],
                        "{blocks}/{swapped}: slot {slot} reused early"
                    );
                    if let Some(a) = after {
                        assert!(computed.contains(&a));
                    }
                    assert!(slot < SLOTS);
                    held[slot] = Some(block);
                    copied_at[block] = Some(i);
                }
                SwapStep::Compute { block, slot } => {
                    assert_eq!(block, computed.len(), "blocks run in order");
                    match slot {
                        None => assert!(block < first),
                        Some(s) => {
                            assert_eq!(held[s], Some(block), "{blocks}/{swapped}: block {block}");
                            used[s] = Some(block);
                            // A copy overlaps a compute unless it is the forward's first step.
                            let c = copied_at[block].expect("copied before");
                            let overlapped = steps[c..i]
                                .iter()
                                .any(|s| matches!(s, SwapStep::Compute { .. }));
                            assert!(
                                overlapped || block == 0,
                                "{blocks}/{swapped}: block {block}"
                            );
                        }
                    }
                    computed.push(block);
                }
            }
        }
        assert_eq!(computed, (0..blocks).collect::<Vec<_>>());
    }

    #[test]
    fn every_swap_count_keeps_each_block_resident_when_it_runs() {
        for blocks in [1, 2, 3, 5, 40] {
            for swapped in 0..=blocks + 1 {
                check(blocks, swapped);
            }
        }
    }

    #[test]
    fn the_schedule_of_five_blocks_with_three_swapped() {
        use SwapStep::*;
        let c = |block, slot| Compute { block, slot };
        let p = |block, slot, after| Prefetch { block, slot, after };
        assert_eq!(
            schedule(5, 3),
            vec![
                p(2, 0, None),
                p(3, 1, None),
                c(0, None),
                c(1, None),
                c(2, Some(0)),
                p(4, 0, Some(2)),
                c(3, Some(1)),
                c(4, Some(0)),
            ]
        );
        assert!(schedule(4, 0)
            .iter()
            .all(|s| matches!(s, Compute { slot: None, .. })));
    }
}
