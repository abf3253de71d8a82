//! Fashion-MNIST in its IDX files: a big-endian header (magic number, then
//! one u32 per dimension) followed by unsigned bytes; gzipped or not.

use super::{DataError, Dataset, Split, check_labels, read_file};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Class names in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// Loads the training (60,000 images) or test (10,000) split from `dir`,
/// which holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte`, each either
/// gzipped (`.gz`, preferred when both exist) or plain. Images are 1x28x28.
pub fn fashion_mnist(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let (images_path, images_bytes) = read_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let (labels_path, labels_bytes) = read_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (image_dims, images) = parse_idx(&images_bytes, &images_path, IMAGES_MAGIC, 3)?;
    let (label_dims, labels) = parse_idx(&labels_bytes, &labels_path, LABELS_MAGIC, 1)?;
    if image_dims[0] != label_dims[0] {
        return Err(DataError::CountMismatch {
            images_path,
            images: image_dims[0],
            labels_path,
            labels: label_dims[0],
        });
    }
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    check_labels(&labels_path, &labels, FASHION_MNIST_CLASSES.len())?;
    Ok(Dataset::new(
        images.to_vec(),
        labels,
        (1, image_dims[1], image_dims[2]),
        FASHION_MNIST_CLASSES.iter().map(|&c| c.to_owned()).collect(),
    ))
}

/// The bytes of `dir/name.gz` decompressed, or else of `dir/name`, with the
/// path read.
fn read_idx_file(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), DataError> {
    let gz = dir.join(format!("{name}.gz"));
    if !gz.exists() {
        let plain = dir.join(name);
        return read_file(&plain).map(|bytes| (plain, bytes));
    }
    let mut bytes = Vec::new();
    GzDecoder::new(read_file(&gz)?.as_slice())
        .read_to_end(&mut bytes)
        .map_err(|source| DataError::Io {
            path: gz.clone(),
            source,
        })?;
    Ok((gz, bytes))
}

/// Checks the header of an IDX file of `rank` dimensions and returns the
/// dimensions and the data bytes.
fn parse_idx<'a>(bytes: &'a [u8], path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let header = 4 * (1 + rank);
    let wrong_size = |expected: usize| DataError::WrongSize {
        path: path.to_owned(),
        expected: expected as u64,
        actual: bytes.len() as u64,
    };
    // The magic number first: it tells a wrong file from a short one.
    let word = |i: usize| {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
    };
    if let Some(found) = word(0).filter(|&found| found != magic) {
        return Err(DataError::BadMagic {
            path: path.to_owned(),
            expected: magic,
            found,
        });
    }
    if bytes.len() < header {
        return Err(wrong_size(header));
    }
    let dims: Vec<usize> = (1..=rank).map(|i| word(i).unwrap() as usize).collect();
    let expected = header + dims.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(wrong_size(expected));
    }
    Ok((dims, &bytes[header..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_dir() -> Option<&'static Path> {
        let dir = Path::new(FASHION_MNIST_SYSTEM_DIR);
        if dir.join("t10k-labels-idx1-ubyte.gz").is_file() {
            Some(dir)
        } else {
            println!("skipped: no Fashion-MNIST at {FASHION_MNIST_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)");
            None
        }
    }

    #[test]
    fn debian_fashion_mnist_has_the_published_split_sizes_and_class_balance() {
        let Some(dir) = system_dir() else { return };
        for (split, per_class) in [(Split::Train, 6000), (Split::Test, 1000)] {
            let data = fashion_mnist(dir, split).unwrap();
            assert_eq!(
                (data.len, data.channels, data.height, data.width),
                (per_class * 10, 1, 28, 28)
            );
            let mut counts = [0; 10];
            for &l in &data.labels {
                counts[l as usize] += 1;
            }
            assert_eq!(counts, [per_class; 10], "{split:?}");
            assert_eq!(data.class_names[9], "Ankle boot");
        }
    }

    /// An IDX file of the given magic and dimensions, data counting up.
    fn idx(magic: u32, dims: &[u32]) -> Vec<u8> {
        let mut bytes: Vec<u8> = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        let n: u32 = dims.iter().product();
        bytes.extend((0..n).map(|i| i as u8));
        bytes
    }

    /// Writes gzipped IDX files for the test split into a fresh folder.
    fn write_split(images: &[u8], labels: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("t10k-images-idx3-ubyte.gz", images),
            ("t10k-labels-idx1-ubyte.gz", labels),
        ] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, bytes).unwrap();
            std::fs::write(dir.path().join(name), gz.finish().unwrap()).unwrap();
        }
        dir
    }

    #[test]
    fn gzipped_idx_files_load_with_their_header_shape() {
        let dir = write_split(&idx(2051, &[3, 2, 4]), &idx(2049, &[3]));
        let data = fashion_mnist(dir.path(), Split::Test).unwrap();
        assert_eq!((data.len, data.channels, data.height, data.width), (3, 1, 2, 4));
        assert_eq!(data.labels, [0, 1, 2]);
        assert_eq!(data.image(2), &[16, 17, 18, 19, 20, 21, 22, 23]);
    }

    #[test]
    fn plain_idx_files_load_when_no_gzip_exists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), idx(2051, &[2, 1, 1])).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx(2049, &[2])).unwrap();
        assert_eq!(fashion_mnist(dir.path(), Split::Train).unwrap().images, [0, 1]);
    }

    #[test]
    fn swapped_files_report_the_wrong_magic_number() {
        let dir = write_split(&idx(2049, &[3]), &idx(2049, &[3]));
        let err = fashion_mnist(dir.path(), Split::Test).unwrap_err();
        assert!(
            matches!(&err, DataError::BadMagic { expected: 2051, found: 2049, path, .. }
            if path.ends_with("t10k-images-idx3-ubyte.gz")),
            "{err}"
        );
    }

    #[test]
    fn truncated_images_report_expected_and_actual_sizes() {
        let mut images = idx(2051, &[3, 2, 4]);
        images.truncate(30);
        let err = fashion_mnist(write_split(&images, &idx(2049, &[3])).path(), Split::Test).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::WrongSize {
                    expected: 40,
                    actual: 30,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn image_and_label_counts_must_agree() {
        let err = fashion_mnist(
            write_split(&idx(2051, &[3, 2, 4]), &idx(2049, &[2])).path(),
            Split::Test,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DataError::CountMismatch {
                    images: 3,
                    labels: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn label_out_of_range_is_reported() {
        let mut labels = idx(2049, &[3]);
        labels[10] = 12;
        let err = fashion_mnist(write_split(&idx(2051, &[3, 1, 1]), &labels).path(), Split::Test).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 2,
                    label: 12,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_io_error_naming_the_file() {
        let dir = write_split(&idx(2051, &[3, 1, 1]), &idx(2049, &[3]));
        let path = dir.path().join("t10k-labels-idx1-ubyte.gz");
        let mut gz = std::fs::read(&path).unwrap();
        gz.truncate(gz.len() / 2);
        std::fs::write(&path, gz).unwrap();
        let err = fashion_mnist(dir.path(), Split::Test).unwrap_err();
        assert!(matches!(&err, DataError::Io { path: p, .. } if *p == path), "{err}");
    }
}
