//! Training data as musubi-tuner describes it: the dataset TOML ([`config`]), which frames of a
//! clip become items ([`frames`]) and the aspect-ratio buckets items are resized and cropped
//! into ([`buckets`]). Pure functions of the config and of media sizes; decoding and caching
//! are built on top of them.

pub mod buckets;
pub mod config;
pub mod frames;

pub use buckets::{fit_to_bucket, BucketSelector, FitGeometry, Rect, Size};
pub use config::{Dataset, DatasetConfig, MediaSource};
pub use frames::{extract_windows, FrameExtraction, FrameSettings, FrameWindow};
