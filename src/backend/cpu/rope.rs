//! Rotary position embedding on interleaved pairs (the Wan DiT's `rope_apply`).

use rayon::prelude::*;

/// Tokens handed to one rayon task at a time.
const MIN_TOKENS_PER_TASK: usize = 16;

/// Rotates `x` (`[batch, seq, heads, head_dim]`) into `out`: channels `(2j, 2j+1)` of every head
/// of token `s` are turned by the angle whose cosine and sine are `cos[s * head_dim/2 + j]` and
/// `sin[...]`: `out[2j] = x[2j] cos - x[2j+1] sin`, `out[2j+1] = x[2j] sin + x[2j+1] cos`.
/// Tokens are processed in parallel.
///
/// # Panics
/// If the slice lengths disagree or `head_dim` is odd (a bug in the caller).
pub fn rope_interleaved(
    x: &[f32],
    out: &mut [f32],
    seq: usize,
    heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
) {
    assert_eq!(x.len(), out.len(), "rope: output size");
    assert!(head_dim.is_multiple_of(2), "rope: odd head_dim");
    let half = head_dim / 2;
    assert!(
        cos.len() == seq * half && sin.len() == seq * half,
        "rope: table size"
    );
    let token = heads * head_dim;
    if token == 0 || seq == 0 {
        return;
    }
    assert_eq!(x.len() % (seq * token), 0, "rope: input size");
    out.par_chunks_mut(token)
        .zip(x.par_chunks(token))
        .enumerate()
        .with_min_len(MIN_TOKENS_PER_TASK)
        .for_each(|(t, (o, r))| {
            let s = t % seq;
            let (c, sn) = (
                &cos[s * half..(s + 1) * half],
                &sin[s * half..(s + 1) * half],
            );
            for (oh, rh) in o.chunks_exact_mut(head_dim).zip(r.chunks_exact(head_dim)) {
                for (((op, rp), &c), &sn) in oh
                    .chunks_exact_mut(2)
                    .zip(rh.chunks_exact(2))
                    .zip(c)
                    .zip(sn)
                {
                    op[0] = rp[0] * c - rp[1] * sn;
                    op[1] = rp[0] * sn + rp[1] * c;
                }
            }
        });
}
