//! Image classification data: CIFAR-10, Fashion-MNIST and folders of images
//! loaded into memory as bytes, the normalisation statistics computed from
//! them, a deterministic background batch loader and the CIFAR-10 download.

mod cifar;
mod download;
mod fashion_mnist;
mod image_folder;
mod loader;

pub use cifar::{CIFAR10_CLASSES, cifar10};
pub use download::{CIFAR10_URL, download_cifar10};
pub use engine::preprocess::Normalization;
pub use fashion_mnist::{FASHION_MNIST_CLASSES, FASHION_MNIST_SYSTEM_DIR, fashion_mnist};
pub use image_folder::{image_folder, load_image};
pub use loader::{Augmentation, Batch, BatchLoader, Position, TrainOptions};

use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// Which half of a data set with a fixed train/test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Labelled images in memory, each stored CHW as bytes (0..=255).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len x channels x height x width` bytes.
    pub images: Vec<u8>,
    /// One label per image, each `< class_names.len()`.
    pub labels: Vec<u32>,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Panics when the buffers disagree with the shape: loaders validate
    /// their files before building a data set.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        (channels, height, width): (usize, usize, usize),
        class_names: Vec<String>,
    ) -> Self {
        let len = labels.len();
        assert_eq!(
            images.len(),
            len * channels * height * width,
            "{len} images of {channels}x{height}x{width} need {} bytes",
            len * channels * height * width
        );
        assert!(
            labels.iter().all(|&l| (l as usize) < class_names.len()),
            "a label is outside the {} classes",
            class_names.len()
        );
        Self {
            images,
            labels,
            len,
            channels,
            height,
            width,
            class_names,
        }
    }

    /// Bytes in one image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The `index`-th image, CHW.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[index * n..(index + 1) * n]
    }

    /// Mean and standard deviation of each channel over every pixel of every
    /// image, on pixels scaled to [0, 1]. A constant channel gets std 1 so
    /// that it normalises to 0 rather than to NaN.
    pub fn per_channel_normalization(&self) -> Normalization {
        let plane = self.height * self.width;
        // Exact integer sums: even 50,000 CIFAR images stay far below u64::MAX.
        let mut sum = vec![0u64; self.channels];
        let mut sum_sq = vec![0u64; self.channels];
        for image in self.images.chunks_exact(self.image_len()) {
            for (c, channel) in image.chunks_exact(plane).enumerate() {
                for &p in channel {
                    sum[c] += p as u64;
                    sum_sq[c] += (p as u64) * (p as u64);
                }
            }
        }
        let count = (self.len * plane) as f64;
        let (mean, std) = sum
            .iter()
            .zip(&sum_sq)
            .map(|(&s, &sq)| {
                let mean = s as f64 / count;
                let var = (sq as f64 / count - mean * mean).max(0.0);
                let std = if var > 0.0 { var.sqrt() / 255.0 } else { 1.0 };
                ((mean / 255.0) as f32, std as f32)
            })
            .unzip();
        Normalization::PerChannel { mean, std }
    }

    /// The mean image on pixels scaled to [0, 1]: the paper's per-pixel mean.
    pub fn per_pixel_mean(&self) -> Normalization {
        let mut sum = vec![0u64; self.image_len()];
        for image in self.images.chunks_exact(self.image_len()) {
            for (s, &p) in sum.iter_mut().zip(image) {
                *s += p as u64;
            }
        }
        let scale = 255.0 * self.len as f64;
        Normalization::PerPixelMean {
            mean: sum.iter().map(|&s| (s as f64 / scale) as f32).collect(),
        }
    }
}

/// Everything that can go wrong reading, decoding or downloading data; each
/// names the file or URL at fault.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: expected {expected} bytes, found {actual}{}", path.display(), size_hint(*expected, *actual))]
    WrongSize { path: PathBuf, expected: u64, actual: u64 },
    #[error("{}: magic number {found}, expected {expected}", path.display())]
    BadMagic { path: PathBuf, expected: u32, found: u32 },
    #[error("{}: record {index} has label {label}, outside 0..{classes}", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u32,
        classes: usize,
    },
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    #[error("{image}: cannot decode the image: {source}")]
    Decode {
        image: String,
        source: engine::classify::ImageError,
    },
    #[error("{}: no class subfolder holds an image", path.display())]
    EmptyImageFolder { path: PathBuf },
    #[error("{}: already exists; remove it to download again", path.display())]
    DestinationExists { path: PathBuf },
    #[error("{url}: server answered HTTP status {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: {source}")]
    Request { url: String, source: ureq::Error },
    #[error("{url}: download truncated: expected {expected} bytes, received {actual}")]
    TruncatedDownload { url: String, expected: u64, actual: u64 },
    #[error("{url}: not a valid .tar.gz archive: {source}")]
    Archive { url: String, source: io::Error },
    #[error("{url}: the archive lacks {file}")]
    MissingFile { url: String, file: String },
    #[error("{file}: SHA-256 mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
}

fn size_hint(expected: u64, actual: u64) -> &'static str {
    if actual < expected {
        " (truncated)"
    } else {
        " (trailing bytes)"
    }
}

/// Fails on the first label that names no class.
fn check_labels(path: &std::path::Path, labels: &[u32], classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| l as usize >= classes) {
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_owned(),
            index,
            label: labels[index],
            classes,
        }),
        None => Ok(()),
    }
}

/// Reads a whole file, naming it on failure.
fn read_file(path: &std::path::Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::testing::assert_close;

    /// Two 1x1x2 images of 2 channels: channel 0 holds 0, 255, 255, 255 and
    /// channel 1 is constant 51.
    fn tiny() -> Dataset {
        Dataset::new(
            vec![0, 255, 51, 51, 255, 255, 51, 51],
            vec![0, 1],
            (2, 1, 2),
            vec!["a".into(), "b".into()],
        )
    }

    #[test]
    fn per_channel_statistics_match_hand_computed_values() {
        let Normalization::PerChannel { mean, std } = tiny().per_channel_normalization() else {
            panic!("per-channel statistics expected");
        };
        // Channel 0: values {0, 1, 1, 1}: mean 3/4, variance 3/16. Channel 1
        // is constant: std falls back to 1. Only f32 rounding separates the two.
        assert_close("mean", &mean, &[0.75, 0.2], 1e-7, 1e-6);
        assert_close("std", &std, &[(3.0f64 / 16.0).sqrt(), 1.0], 1e-7, 1e-6);
    }

    #[test]
    fn per_pixel_mean_averages_each_position_over_images() {
        let Normalization::PerPixelMean { mean } = tiny().per_pixel_mean() else {
            panic!("per-pixel mean expected");
        };
        assert_close("mean", &mean, &[0.5, 1.0, 0.2, 0.2], 1e-7, 1e-6);
    }

    #[test]
    fn normalization_round_trips_through_json() {
        for n in [tiny().per_channel_normalization(), tiny().per_pixel_mean()] {
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<Normalization>(&json).unwrap(), n);
        }
    }

    #[test]
    #[should_panic(expected = "need 8 bytes")]
    fn dataset_rejects_buffers_of_the_wrong_size() {
        Dataset::new(vec![0; 7], vec![0, 1], (2, 1, 2), vec!["a".into(), "b".into()]);
    }
}
