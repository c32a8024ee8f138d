//! Training data as musubi-tuner describes it: the dataset TOML ([`config`]), which frames of a
//! clip become items ([`frames`]), the aspect-ratio buckets items are resized and cropped into
//! ([`buckets`]), the media files and captions of a dataset ([`items`]) and their pixels
//! ([`media`]; clips are decoded by [`crate::video::decode_video`]). The caches are written by
//! [`crate::train::caching`].

pub mod buckets;
pub mod config;
pub mod frames;
pub mod items;
pub mod media;

pub use buckets::{fit_to_bucket, BucketSelector, FitGeometry, Rect, Size};
pub use config::{Dataset, DatasetConfig, MediaSource};
pub use frames::{extract_windows, FrameExtraction, FrameSettings, FrameWindow};
pub use items::{list_media, MediaFile, MediaListing};
pub use media::{load_image, RgbImage};
