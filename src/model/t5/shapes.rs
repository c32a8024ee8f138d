//! The UMT5 encoder's tensors by name and shape, for building random models (benchmarks, the
//! demo) without a checkpoint.

use super::T5Config;

/// Every tensor [`super::Umt5Encoder::new`] takes for `cfg` (original Wan names), with its
/// shape, in a fixed order: the token embedding, the shared position table when `cfg` has one,
/// each block's, the final norm.
pub fn weight_shapes(cfg: &T5Config) -> Vec<(String, Vec<usize>)> {
    let (d, a, f) = (cfg.dim, cfg.dim_attn, cfg.dim_ffn);
    let table = vec![cfg.num_buckets, cfg.num_heads];
    let mut shapes = vec![("token_embedding.weight".to_string(), vec![cfg.vocab, d])];
    if cfg.shared_pos {
        shapes.push(("pos_embedding.embedding.weight".into(), table.clone()));
    }
    for i in 0..cfg.num_layers {
        let mut add =
            |name: &str, dims: Vec<usize>| shapes.push((format!("blocks.{i}.{name}"), dims));
        add("norm1.weight", vec![d]);
        add("norm2.weight", vec![d]);
        for m in ["q", "k", "v"] {
            add(&format!("attn.{m}.weight"), vec![a, d]);
        }
        add("attn.o.weight", vec![d, a]);
        if !cfg.shared_pos {
            add("pos_embedding.embedding.weight", table.clone());
        }
        add("ffn.gate.0.weight", vec![f, d]);
        add("ffn.fc1.weight", vec![f, d]);
        add("ffn.fc2.weight", vec![d, f]);
    }
    shapes.push(("norm.weight".into(), vec![d]));
    shapes
}
