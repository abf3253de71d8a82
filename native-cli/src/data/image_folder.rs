//! Folders of ordinary image files, one subfolder per class, and the
//! single-image decode that `classify` shares with them.
//!
//! Images become RGB bytes exactly as the browser sees them (see
//! `engine::classify`: transparency onto white, triangle-filter resize).

use super::{DataError, Dataset, read_file};
use engine::classify;
use std::path::{Path, PathBuf};

/// Loads `dir/<class>/<image>`: classes are the subfolders in sorted name
/// order (label 0 first), images within a class in sorted name order. Names
/// starting with '.' are skipped, and so are plain files directly in `dir`;
/// any other file must decode as an image. `size` is `(height, width)`.
pub fn image_folder(dir: &Path, size: (usize, usize)) -> Result<Dataset, DataError> {
    let classes = sorted_entries(dir, |path| path.is_dir())?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (label, class_dir) in classes.iter().enumerate() {
        for file in sorted_entries(class_dir, |path| !path.is_dir())? {
            images.extend(load_image(&file, size)?);
            labels.push(label as u32);
        }
    }
    if labels.is_empty() {
        return Err(DataError::EmptyImageFolder { path: dir.to_owned() });
    }
    let class_names = classes
        .iter()
        .map(|c| c.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    Ok(Dataset::new(images, labels, (3, size.0, size.1), class_names))
}

/// Decodes the image file at `path` into `size = (height, width)` RGB bytes,
/// CHW.
pub fn load_image(path: &Path, size: (usize, usize)) -> Result<Vec<u8>, DataError> {
    decode(&read_file(path)?, size, || path.display().to_string())
}

fn decode(bytes: &[u8], (height, width): (usize, usize), name: impl Fn() -> String) -> Result<Vec<u8>, DataError> {
    let error = |source| DataError::Decode { image: name(), source };
    let rgb = classify::decode(bytes).map_err(error)?;
    classify::to_chw(&rgb, [3, height, width]).map_err(error)
}

/// The entries of `dir` that pass `keep`, hidden ones excluded, sorted by
/// name.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let io_error = |source| DataError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && keep(&path) {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};
    use std::io::Cursor;

    fn encode(image: &RgbaImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        let image = image::DynamicImage::ImageRgba8(image.clone());
        // JPEG has no alpha channel.
        let image = if format == ImageFormat::Jpeg {
            image.into_rgb8().into()
        } else {
            image
        };
        image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    fn solid(width: u32, height: u32, rgba: [u8; 4]) -> RgbaImage {
        RgbaImage::from_pixel(width, height, Rgba(rgba))
    }

    #[test]
    fn folder_classes_are_sorted_subfolders_and_hidden_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["dog", "cat", ".cache"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let write =
            |path: &str, image: RgbaImage, format| std::fs::write(root.join(path), encode(&image, format)).unwrap();
        write("dog/b.png", solid(4, 4, [0, 0, 255, 255]), ImageFormat::Png);
        write("dog/a.bmp", solid(6, 3, [255, 0, 0, 255]), ImageFormat::Bmp);
        write("cat/x.jpg", solid(4, 4, [0, 255, 0, 255]), ImageFormat::Jpeg);
        write(".cache/junk.png", solid(1, 1, [0; 4]), ImageFormat::Png);
        std::fs::write(root.join("dog/.DS_Store"), b"not an image").unwrap();
        std::fs::write(root.join("README.txt"), b"not a class").unwrap();

        let data = image_folder(root, (2, 2)).unwrap();
        assert_eq!(data.class_names, ["cat", "dog"]);
        assert_eq!(data.labels, [0, 1, 1]);
        assert_eq!((data.channels, data.height, data.width), (3, 2, 2));
        // JPEG is lossy: green within a few levels; then dog/a.bmp (red)
        // before dog/b.png (blue).
        let cat = data.image(0);
        assert!(
            cat[..4].iter().all(|&r| r < 8) && cat[4..8].iter().all(|&g| g > 247),
            "{cat:?}"
        );
        assert_eq!(data.image(1), [[255; 4], [0; 4], [0; 4]].concat());
        assert_eq!(data.image(2), [[0; 4], [0; 4], [255; 4]].concat());
    }

    #[test]
    fn undecodable_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cls")).unwrap();
        let bad = dir.path().join("cls/broken.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
        let err = image_folder(dir.path(), (4, 4)).unwrap_err();
        assert!(
            matches!(&err, DataError::Decode { image, .. } if *image == bad.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn folder_without_images_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty_class")).unwrap();
        let err = image_folder(dir.path(), (4, 4)).unwrap_err();
        assert!(matches!(err, DataError::EmptyImageFolder { .. }), "{err}");
    }
}
