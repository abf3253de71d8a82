//! NumPy `.npy` files of float32 (little-endian, C order): the exchange format
//! of `resnet-native forward` for parity checks against other frameworks.

use anyhow::{Context as _, bail};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses an `.npy` file holding a little-endian float32 C-order array.
pub fn read_f32(bytes: &[u8]) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (bad magic)");
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = std::str::from_utf8(
        bytes
            .get(header_start..header_start + header_len)
            .context("truncated header")?,
    )?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let start = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("header has no '{key}'"))?;
        Ok(header[start + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    if !field("descr")?.starts_with("'<f4'") {
        bail!("only little-endian float32 ('<f4') arrays are supported; header: {header}");
    }
    if !field("fortran_order")?.starts_with("False") {
        bail!("Fortran-order arrays are not supported; save with np.ascontiguousarray");
    }
    let shape_text = field("shape")?;
    let inner =
        &shape_text[shape_text.find('(').context("bad shape")? + 1..shape_text.find(')').context("bad shape")?];
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("bad dimension {s:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = &bytes[header_start + header_len..];
    let count: usize = shape.iter().product();
    if data.len() != count * 4 {
        bail!(
            "shape {shape:?} needs {} bytes of data, the file has {}",
            count * 4,
            data.len()
        );
    }
    Ok((
        shape,
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

/// Serialises a float32 C-order array as `.npy` (version 1.0).
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), values.len(), "shape and data disagree");
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Data starts at a multiple of 64 bytes; the header ends with a newline.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_numpy_layout() {
        let bytes = write_f32(&[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data must be 64-byte aligned");
        assert!(
            std::str::from_utf8(&bytes[10..10 + header_len])
                .unwrap()
                .contains("'shape': (2, 3)")
        );
        assert_eq!(
            read_f32(&bytes).unwrap(),
            (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.5])
        );
        assert_eq!(read_f32(&write_f32(&[4], &[1.0; 4])).unwrap().0, vec![4]);
    }

    #[test]
    fn reads_a_file_written_by_numpy() {
        // np.save of np.arange(3, dtype='<f4'), byte for byte.
        let mut bytes = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }".to_vec();
        bytes.extend(std::iter::repeat_n(b' ', 128 - 10 - 57 - 1));
        bytes.push(b'\n');
        bytes.extend([0.0f32, 1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()));
        assert_eq!(read_f32(&bytes).unwrap(), (vec![3], vec![0.0, 1.0, 2.0]));
    }

    #[test]
    fn rejects_other_dtypes_and_truncation() {
        let good = write_f32(&[2], &[1.0, 2.0]);
        let err = read_f32(&good[..good.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("needs 8 bytes"), "{err}");
        let mut f8 = good.clone();
        let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
        f8[at + 2] = b'8';
        assert!(read_f32(&f8).unwrap_err().to_string().contains("float32"));
        assert!(read_f32(b"PK\x03\x04 not npy").is_err());
    }
}
