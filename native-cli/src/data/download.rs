//! Downloading CIFAR-10: streamed to a temporary file with a progress bar,
//! extracted into a temporary folder, verified, and only then renamed into
//! place, so that a failure at any step leaves nothing behind.
//!
//! Two releases are accepted. The official archive is recognised by its own
//! SHA-256 (the published MD5 of the same archive is
//! c32a1d4ab5d03f1284b67883e8d87530). Any other archive, such as a mirror of
//! the project's shared copy (the same images and labels in another record
//! order, see its PROVENANCE.md), must hold files whose SHA-256 digests are
//! those of that copy.

use super::cifar::{TEST_FILE, TRAIN_FILES};
use super::{DataError, read_file};
use flate2::read::GzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The official CIFAR-10 binary archive.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";

/// The folder the archive unpacks to.
const CIFAR10_DIR: &str = "cifar-10-batches-bin";

/// What a downloaded archive is checked against.
struct Checksums<'a> {
    /// SHA-256 digests of whole archives trusted as they are; their files
    /// need only be present.
    archives: &'a [&'a str],
    /// Each expected file (relative to the extracted folder) and the SHA-256
    /// it must have when the archive is not one of `archives`.
    files: &'a [(&'a str, &'a str)],
}

const CIFAR10_CHECKSUMS: Checksums<'static> = Checksums {
    // The official archive (170,052,171 bytes).
    archives: &["c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"],
    // shared/data/cifar-10-batches-bin/SHA256SUMS.
    files: &[
        (
            TRAIN_FILES[0],
            "9446b053ffeaa07abb5370c934a5a598d4eb98fb8f46fd7d63eb7e85da9a351c",
        ),
        (
            TRAIN_FILES[1],
            "05f1dad6b4bd44f90417b5ef900abd8e4f4219569e0e2418c41fafaf574bdb77",
        ),
        (
            TRAIN_FILES[2],
            "ff81815413d593775b2ea9a304cc6c7f96ff3f1fa0d971d45ab3ff29ac226194",
        ),
        (
            TRAIN_FILES[3],
            "9b3b755f30d9303c4bf1d30a62865afb4e8d5b8621f523e79060df99364ea25c",
        ),
        (
            TRAIN_FILES[4],
            "cc7267af63b35ef2de6aff6e5b6f93290820ff841bcfb6044a98364bd0d20c44",
        ),
        (
            TEST_FILE,
            "675b37882dc1e9f6f8f2684a0eefe95a912feafe19b1db6c1df0bb316f26b524",
        ),
        (
            "batches.meta.txt",
            "2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00",
        ),
    ],
};

/// Downloads the CIFAR-10 binary archive at `url` (normally [`CIFAR10_URL`])
/// and installs it as `dest_dir/cifar-10-batches-bin`, which it returns.
/// Fails if that folder already exists.
pub fn download_cifar10(dest_dir: &Path, url: &str) -> Result<PathBuf, DataError> {
    download_verified(dest_dir, url, CIFAR10_DIR, &CIFAR10_CHECKSUMS)
}

/// Downloads the `.tar.gz` at `url`, checks that it unpacks to a folder
/// `dir_name` that satisfies `checksums`, and moves that folder into
/// `dest_dir`.
fn download_verified(dest_dir: &Path, url: &str, dir_name: &str, checksums: &Checksums) -> Result<PathBuf, DataError> {
    let dest = dest_dir.join(dir_name);
    if dest.exists() {
        return Err(DataError::DestinationExists { path: dest });
    }
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| DataError::Io { path, source }
    };
    std::fs::create_dir_all(dest_dir).map_err(io_error(dest_dir))?;
    // Temporaries live in dest_dir, on the same file system as the final
    // folder, so that the last step is an atomic rename; they delete
    // themselves on every early return.
    let prefix = format!(".{dir_name}.partial");
    let mut temp = tempfile::Builder::new();
    temp.prefix(&prefix);
    let (mut archive, archive_path) = temp.tempfile_in(dest_dir).map_err(io_error(dest_dir))?.into_parts();
    let archive_sha256 = fetch(url, &archive_path, &mut archive)?;

    let unpacked = temp.tempdir_in(dest_dir).map_err(io_error(dest_dir))?;
    archive.rewind().map_err(io_error(&archive_path))?;
    tar::Archive::new(GzDecoder::new(archive))
        .unpack(unpacked.path())
        .map_err(|source| DataError::Archive {
            url: url.to_owned(),
            source,
        })?;

    let extracted = unpacked.path().join(dir_name);
    let trusted_archive = checksums.archives.contains(&archive_sha256.as_str());
    for &(name, expected) in checksums.files {
        let path = extracted.join(name);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                url: url.to_owned(),
                file: format!("{dir_name}/{name}"),
            });
        }
        if trusted_archive {
            continue;
        }
        let actual = hex(&Sha256::digest(read_file(&path)?));
        if actual != expected {
            return Err(DataError::ChecksumMismatch {
                file: format!("{dir_name}/{name}"),
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    std::fs::rename(&extracted, &dest).map_err(io_error(&dest))?;
    Ok(dest)
}

/// Streams the body at `url` into `out` (the file at `out_path`) behind a
/// progress bar and returns its SHA-256; a body shorter than its announced
/// length is an error.
fn fetch(url: &str, out_path: &Path, out: &mut File) -> Result<String, DataError> {
    let request_error = |source| DataError::Request {
        url: url.to_owned(),
        source,
    };
    let write_error = |source| DataError::Io {
        path: out_path.to_owned(),
        source,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(status) => DataError::HttpStatus {
            url: url.to_owned(),
            status,
        },
        other => request_error(other),
    })?;
    let expected = response.body().content_length();
    let bar = match expected {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec}, {eta} left")
                .expect("valid progress template"),
        ),
        None => ProgressBar::new_spinner(),
    };
    let mut body = response.body_mut().as_reader();
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut buffer = vec![0; 1 << 16];
    let truncated = |received| DataError::TruncatedDownload {
        url: url.to_owned(),
        expected: expected.unwrap_or_default(),
        actual: received,
    };
    loop {
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) if expected.is_some_and(|len| received < len) => return Err(truncated(received)),
            Err(e) => return Err(request_error(e.into())),
        };
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(write_error)?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    if expected.is_some_and(|len| received != len) {
        return Err(truncated(received));
    }
    out.flush().map_err(write_error)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serves one HTTP request on 127.0.0.1 with `head` (status line and
    /// headers) followed by `body`, then closes; returns the URL.
    fn serve_once(head: String, mut body: impl Read + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = std::io::BufReader::new(stream);
            let mut line = String::new();
            while request.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut stream = request.into_inner();
            stream.write_all(head.as_bytes()).unwrap();
            // The client may hang up first when it rejects the response.
            let _ = std::io::copy(&mut body, &mut stream);
        });
        url
    }

    fn ok_head(len: u64) -> String {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    }

    /// Serves `archive` whole.
    fn serve_archive(archive: Vec<u8>) -> String {
        serve_once(ok_head(archive.len() as u64), std::io::Cursor::new(archive))
    }

    /// A .tar.gz of `dir/name` entries with the given contents.
    fn tar_gz(dir: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, format!("{dir}/{name}"), *contents)
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const A: &[u8] = b"abc";
    const B: &[u8] = b"";
    /// SHA-256 of "abc" and of the empty string (FIPS 180-2 test vectors).
    const FAKE: Checksums<'static> = Checksums {
        archives: &[],
        files: &[
            (
                "a.bin",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                "b.bin",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ],
    };

    fn fake_archive() -> Vec<u8> {
        tar_gz("fake", &[("a.bin", A), ("b.bin", B)])
    }

    /// Nothing but the installed folder may be left in `dest`.
    fn leftovers(dest: &Path) -> Vec<String> {
        std::fs::read_dir(dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "fake")
            .collect()
    }

    #[test]
    fn verified_archive_is_installed_and_temporaries_removed() {
        let dest = tempfile::tempdir().unwrap();
        let dir = download_verified(dest.path(), &serve_archive(fake_archive()), "fake", &FAKE).unwrap();
        assert_eq!(dir, dest.path().join("fake"));
        assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), A);
        assert!(leftovers(dest.path()).is_empty(), "{:?}", leftovers(dest.path()));
        let again = download_verified(dest.path(), "http://127.0.0.1:9/unused", "fake", &FAKE).unwrap_err();
        assert!(matches!(again, DataError::DestinationExists { .. }), "{again}");
    }

    #[test]
    fn trusted_archive_digest_skips_the_file_digests() {
        let archive = fake_archive();
        let digest = hex(&Sha256::digest(&archive));
        let checksums = Checksums {
            archives: &[&digest],
            files: &[("a.bin", "not the digest of a.bin"), ("b.bin", "nor of b.bin")],
        };
        let dest = tempfile::tempdir().unwrap();
        download_verified(dest.path(), &serve_archive(archive), "fake", &checksums).unwrap();
    }

    #[test]
    fn http_404_is_reported_with_its_status() {
        let dest = tempfile::tempdir().unwrap();
        let url = serve_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\n".into(),
            &b"not found"[..],
        );
        let err = download_verified(dest.path(), &url, "fake", &FAKE).unwrap_err();
        assert!(matches!(err, DataError::HttpStatus { status: 404, .. }), "{err}");
        assert!(leftovers(dest.path()).is_empty());
    }

    #[test]
    fn truncated_body_is_reported_with_both_sizes() {
        let archive = fake_archive();
        let sent = archive.len() as u64 / 2;
        let url = serve_once(
            ok_head(archive.len() as u64),
            std::io::Cursor::new(archive.clone()).take(sent),
        );
        let dest = tempfile::tempdir().unwrap();
        let err = download_verified(dest.path(), &url, "fake", &FAKE).unwrap_err();
        assert!(
            matches!(err, DataError::TruncatedDownload { expected, actual, .. }
                if expected == archive.len() as u64 && actual == sent),
            "{err}"
        );
        assert!(leftovers(dest.path()).is_empty(), "{:?}", leftovers(dest.path()));
    }

    #[test]
    fn corrupted_file_names_the_file_and_both_digests() {
        let url = serve_archive(tar_gz("fake", &[("a.bin", b"abd"), ("b.bin", B)]));
        let dest = tempfile::tempdir().unwrap();
        let err = download_verified(dest.path(), &url, "fake", &FAKE).unwrap_err();
        let DataError::ChecksumMismatch { file, expected, actual } = &err else {
            panic!("checksum mismatch expected, got {err}");
        };
        assert_eq!((file.as_str(), expected.as_str()), ("fake/a.bin", FAKE.files[0].1));
        assert_eq!(actual, &hex(&Sha256::digest(b"abd")));
        assert!(leftovers(dest.path()).is_empty(), "{:?}", leftovers(dest.path()));
    }

    #[test]
    fn archive_lacking_a_file_or_not_gzip_is_rejected() {
        let dest = tempfile::tempdir().unwrap();
        let url = serve_archive(tar_gz("fake", &[("a.bin", A)]));
        let err = download_verified(dest.path(), &url, "fake", &FAKE).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { file, .. } if file == "fake/b.bin"),
            "{err}"
        );
        let err = download_verified(dest.path(), &serve_archive(b"<html>".to_vec()), "fake", &FAKE).unwrap_err();
        assert!(matches!(err, DataError::Archive { .. }), "{err}");
        assert!(leftovers(dest.path()).is_empty(), "{:?}", leftovers(dest.path()));
    }

    #[test]
    fn embedded_checksums_match_the_shared_sha256sums() {
        let Some(dir) = super::super::cifar::tests::shared_cifar_dir() else {
            return;
        };
        let listed = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        let mut listed: Vec<(&str, &str)> = listed
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(digest, name)| (name, digest))
            .collect();
        let mut embedded = CIFAR10_CHECKSUMS.files.to_vec();
        listed.sort();
        embedded.sort();
        assert_eq!(embedded, listed);
    }

    /// Slow (a few seconds): packs the real shared CIFAR-10 files (184 MB)
    /// into a .tar.gz, serves it, and installs it with the real checksums.
    #[test]
    fn real_shared_cifar10_archive_downloads_and_verifies() {
        let Some(dir) = super::super::cifar::tests::shared_cifar_dir() else {
            return;
        };
        let scratch = tempfile::tempdir().unwrap();
        let archive_path = scratch.path().join("cifar-10-binary.tar.gz");
        let mut builder = tar::Builder::new(GzEncoder::new(
            File::create(&archive_path).unwrap(),
            Compression::none(),
        ));
        for (name, _) in CIFAR10_CHECKSUMS.files {
            builder
                .append_path_with_name(dir.join(name), format!("{CIFAR10_DIR}/{name}"))
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        let len = std::fs::metadata(&archive_path).unwrap().len();
        let url = serve_once(ok_head(len), File::open(&archive_path).unwrap());
        let dest = scratch.path().join("data");
        let installed = download_cifar10(&dest, &url).unwrap();
        let test = super::super::cifar10(&installed, super::super::Split::Test).unwrap();
        assert_eq!(test.len, 10_000);
    }
}
