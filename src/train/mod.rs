//! LoRA fine-tuning: the dataset description (musubi-tuner's TOML) and its semantics.

pub mod dataset;
