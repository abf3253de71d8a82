//! CIFAR-10, binary version: each batch file holds 10,000 records of one label
//! byte followed by the 32x32 red, green and blue planes (already CHW).

use super::{DataError, Dataset, Split, check_labels, read_file};
use std::path::Path;

/// Class names in label order (the data set's `batches.meta.txt`).
pub use engine::model::CIFAR10_CLASSES;

const SIDE: usize = 32;
const IMAGE_BYTES: usize = 3 * SIDE * SIDE;
const RECORDS_PER_BATCH: usize = 10_000;

pub(super) const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub(super) const TEST_FILE: &str = "test_batch.bin";

/// Loads the training (50,000 images) or test (10,000) split from `dir`, the
/// `cifar-10-batches-bin` folder.
pub fn cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let files: &[&str] = match split {
        Split::Train => &TRAIN_FILES,
        Split::Test => &[TEST_FILE],
    };
    let mut images = Vec::with_capacity(files.len() * RECORDS_PER_BATCH * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(files.len() * RECORDS_PER_BATCH);
    for file in files {
        let path = dir.join(file);
        parse_batch(&read_file(&path)?, &path, RECORDS_PER_BATCH, &mut images, &mut labels)?;
    }
    let class_names = CIFAR10_CLASSES.iter().map(|&c| c.to_owned()).collect();
    Ok(Dataset::new(images, labels, (3, SIDE, SIDE), class_names))
}

/// Appends the `records` records of one batch file's bytes.
fn parse_batch(
    bytes: &[u8],
    path: &Path,
    records: usize,
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let expected = records * (1 + IMAGE_BYTES);
    if bytes.len() != expected {
        return Err(DataError::WrongSize {
            path: path.to_owned(),
            expected: expected as u64,
            actual: bytes.len() as u64,
        });
    }
    let first = labels.len();
    for record in bytes.chunks_exact(1 + IMAGE_BYTES) {
        labels.push(record[0] as u32);
        images.extend_from_slice(&record[1..]);
    }
    check_labels(path, &labels[first..], CIFAR10_CLASSES.len())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The shared copy of CIFAR-10, or `None` (with the reason printed) when
    /// this checkout has none.
    pub(in crate::data) fn shared_cifar_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar-10-batches-bin");
        if dir.join(TEST_FILE).is_file() {
            Some(dir)
        } else {
            println!("skipped: no CIFAR-10 at {}", dir.display());
            None
        }
    }

    #[test]
    fn shared_cifar10_has_the_published_split_sizes_and_class_balance() {
        let Some(dir) = shared_cifar_dir() else { return };
        for (split, per_class) in [(Split::Train, 5000), (Split::Test, 1000)] {
            let data = cifar10(&dir, split).unwrap();
            assert_eq!(
                (data.len, data.channels, data.height, data.width),
                (per_class * 10, 3, 32, 32)
            );
            let mut counts = [0; 10];
            for &l in &data.labels {
                counts[l as usize] += 1;
            }
            assert_eq!(counts, [per_class; 10], "{split:?}");
        }
    }

    #[test]
    fn class_names_match_the_shared_meta_file() {
        let Some(dir) = shared_cifar_dir() else { return };
        let meta = std::fs::read_to_string(dir.join("batches.meta.txt")).unwrap();
        let names: Vec<&str> = meta.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(names, CIFAR10_CLASSES);
    }

    #[test]
    fn shared_train_statistics_match_the_known_cifar10_figures() {
        let Some(dir) = shared_cifar_dir() else { return };
        let engine::preprocess::Normalization::PerChannel { mean, std } =
            cifar10(&dir, Split::Train).unwrap().per_channel_normalization()
        else {
            panic!("per-channel statistics expected");
        };
        // PROVENANCE.md: means 125.307, 122.950, 113.865 (of 255) and stds
        // 0.2470, 0.2435, 0.2616, quoted to the last digit shown.
        let want_mean = [125.307 / 255.0, 122.950 / 255.0, 113.865 / 255.0];
        engine::testing::assert_close("mean", &mean, &want_mean, 2e-6, 0.0);
        engine::testing::assert_close("std", &std, &[0.2470, 0.2435, 0.2616], 5e-5, 0.0);
    }

    /// Two records: labels 3 and 9, pixels counting up from the label.
    fn two_records() -> Vec<u8> {
        let mut bytes = Vec::new();
        for label in [3u8, 9] {
            bytes.push(label);
            bytes.extend((0..IMAGE_BYTES).map(|i| (i as u8).wrapping_add(label)));
        }
        bytes
    }

    #[test]
    fn records_split_into_labels_and_chw_images() {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        parse_batch(&two_records(), Path::new("b.bin"), 2, &mut images, &mut labels).unwrap();
        assert_eq!(labels, [3, 9]);
        assert_eq!(images.len(), 2 * IMAGE_BYTES);
        // First red pixel, first green pixel (plane 1 starts at 1024) of image 1.
        assert_eq!((images[IMAGE_BYTES], images[IMAGE_BYTES + 1024]), (9, 9));
    }

    #[test]
    fn truncated_batch_reports_file_and_sizes() {
        let bytes = two_records();
        let err = parse_batch(&bytes[..5000], Path::new("b.bin"), 2, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::WrongSize {
                    expected: 6146,
                    actual: 5000,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), "b.bin: expected 6146 bytes, found 5000 (truncated)");
    }

    #[test]
    fn label_out_of_range_names_the_record() {
        let mut bytes = two_records();
        bytes[1 + IMAGE_BYTES] = 10;
        let err = parse_batch(&bytes, Path::new("b.bin"), 2, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "b.bin: record 1 has label 10, outside 0..10");
    }

    #[test]
    fn missing_batch_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = cifar10(dir.path(), Split::Test).unwrap_err();
        assert!(
            matches!(&err, DataError::Io { path, .. } if path.ends_with(TEST_FILE)),
            "{err}"
        );
    }
}
