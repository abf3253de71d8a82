//! Tensors on the GPU: 4-byte elements (f32, or u32 for labels and counts)
//! in a buffer, possibly a view at an offset into a larger one (all parameters
//! of a network live in one flat buffer so that one SGD dispatch updates them).
//!
//! Layout: NCHW, row-major. PyTorch weights (OIHW) and activations (NCHW) then
//! import and export as a plain copy, bit-exact. The kernels turn convolutions
//! into GEMMs whose long dimension is the output pixels of one image, which are
//! contiguous in NCHW, so vector loads along pixels stay unit-stride.

use crate::EngineError;
use std::sync::{Arc, OnceLock};
use wgpu::util::DeviceExt;

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Clone, Debug)]
pub struct Tensor {
    pub buffer: wgpu::Buffer,
    /// Offset of the first element in `buffer`, in bytes; a multiple of
    /// [`VIEW_ALIGNMENT`] elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    /// Its texture mirror, created when a kernel first binds it (clones
    /// share it; a view has its own).
    mirror: Arc<OnceLock<TextureMirror>>,
}

/// Elements per row of a tensor's texture mirror: kernels fetch element `i`
/// at texel `(i % MIRROR_WIDTH, i / MIRROR_WIDTH)`. WebGPU's default
/// `maxTextureDimension2D` (8192) rows of it hold any tensor that a storage
/// binding can (128 MiB).
pub const MIRROR_WIDTH: u32 = 8192;

/// WGSL for kernels that read tensors through their texture mirrors
/// (`mirrored(t, i)`, `mirrored_vec4(t, i)`); the engine appends it to their
/// modules.
pub const MIRROR_WGSL: &str = include_str!("../../shaders/mirror.wgsl");

/// `source` as the engine compiles a module of it: with [`MIRROR_WGSL`]
/// appended where it reads texture mirrors.
pub fn with_mirror_wgsl(source: String) -> String {
    if source.contains("mirrored") && !source.contains("fn mirrored(") {
        source + MIRROR_WGSL
    } else {
        source
    }
}

/// A copy of a tensor's elements in an `r32float` texture, [`MIRROR_WIDTH`]
/// per row, for kernels that read the tensor through texel fetches: llvmpipe
/// fetches a texel for its 8 lanes with one gather, but loads from a storage
/// buffer lane by lane, each lane's value passing through the stack. The
/// dispatches that read a mirror copy the tensor into it first (see
/// [`crate::kernel::record`]).
#[derive(Debug)]
struct TextureMirror {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
}

/// Views start at multiples of this many elements: WebGPU's default
/// `minStorageBufferOffsetAlignment` is 256 bytes.
pub const VIEW_ALIGNMENT: usize = 64;

fn check_size(device: &wgpu::Device, len: usize) -> Result<u64, EngineError> {
    // Zero-sized bindings are invalid; keep at least one element.
    let bytes = (len.max(1) * 4) as u64;
    let limit = device.limits().max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(EngineError::TooLarge { bytes, limit });
    }
    Ok(bytes)
}

impl Tensor {
    /// A zero-filled tensor.
    pub fn zeros(device: &wgpu::Device, shape: &[usize]) -> Result<Self, EngineError> {
        let bytes = check_size(device, shape.iter().product())?;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: USAGE,
            mapped_at_creation: false,
        });
        Ok(Self {
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            mirror: Arc::default(),
        })
    }

    /// A tensor holding `data` (row-major in `shape`).
    pub fn from_slice(device: &wgpu::Device, shape: &[usize], data: &[f32]) -> Result<Self, EngineError> {
        let len: usize = shape.iter().product();
        if data.len() != len {
            return Err(EngineError::ShapeMismatch {
                shape: shape.to_vec(),
                len,
                got: data.len(),
            });
        }
        check_size(device, len)?;
        let contents: &[u8] = if data.is_empty() {
            &[0; 4]
        } else {
            bytemuck::cast_slice(data)
        };
        let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: USAGE,
        });
        Ok(Self {
            buffer,
            offset: 0,
            shape: shape.to_vec(),
            mirror: Arc::default(),
        })
    }

    /// A tensor of u32 values (labels, counts).
    pub fn from_u32(device: &wgpu::Device, shape: &[usize], data: &[u32]) -> Result<Self, EngineError> {
        Self::from_slice(device, shape, bytemuck::cast_slice(data))
    }

    /// As [`Tensor::from_slice`], from f64 values (CPU reference data).
    pub fn from_f64(device: &wgpu::Device, shape: &[usize], data: &[f64]) -> Result<Self, EngineError> {
        let data: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        Self::from_slice(device, shape, &data)
    }

    /// A view of `shape` starting `start` elements into this tensor; `start` must
    /// be a multiple of [`VIEW_ALIGNMENT`].
    pub fn view(&self, start: usize, shape: &[usize]) -> Tensor {
        let len: usize = shape.iter().product();
        assert!(
            start.is_multiple_of(VIEW_ALIGNMENT),
            "view start {start} is not a multiple of {VIEW_ALIGNMENT}"
        );
        assert!(
            start + len <= self.len(),
            "view {start}+{len} exceeds tensor of {} elements",
            self.len()
        );
        Tensor {
            buffer: self.buffer.clone(),
            offset: self.offset + (start * 4) as u64,
            shape: shape.to_vec(),
            mirror: Arc::default(),
        }
    }

    /// Its texture mirror (see [`TextureMirror`]), created on first use.
    pub fn mirror_view(&self, device: &wgpu::Device) -> &wgpu::TextureView {
        let len = self.len().max(1) as u32;
        &self
            .mirror
            .get_or_init(|| {
                let texture = device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("tensor mirror"),
                    size: wgpu::Extent3d {
                        width: MIRROR_WIDTH,
                        height: len.div_ceil(MIRROR_WIDTH),
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::R32Float,
                    // COPY_SRC: tests read mirrors back.
                    usage: wgpu::TextureUsages::TEXTURE_BINDING
                        | wgpu::TextureUsages::COPY_DST
                        | wgpu::TextureUsages::COPY_SRC,
                    view_formats: &[],
                });
                let view = texture.create_view(&Default::default());
                TextureMirror { texture, view }
            })
            .view
    }

    /// Whether `other` is a clone of it, with the same texture mirror.
    pub fn shares_mirror(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.mirror, &other.mirror)
    }

    /// Records the copy of its elements into its texture mirror: whole rows,
    /// then the last, partial one. Call only after [`Tensor::mirror_view`].
    pub fn record_mirror_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        let texture = &self.mirror.get().expect("a mirror is copied only once bound").texture;
        let len = self.len() as u32;
        let (rows, rest) = (len / MIRROR_WIDTH, len % MIRROR_WIDTH);
        let row_bytes = MIRROR_WIDTH * 4;
        let mut copy = |row: u32, width: u32, height: u32| {
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: self.offset + u64::from(row) * u64::from(row_bytes),
                        bytes_per_row: Some(row_bytes),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: row, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width,
                    height,
                    depth_or_array_layers: 1,
                },
            );
        };
        if rows > 0 {
            copy(0, MIRROR_WIDTH, rows);
        }
        if rest > 0 {
            copy(rows, rest, 1);
        }
    }

    /// The binding of exactly this tensor's elements.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new((self.len().max(1) * 4) as u64),
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites the contents (reuses the buffer; nothing is allocated on the GPU).
    pub fn write(&self, queue: &wgpu::Queue, data: &[f32]) -> Result<(), EngineError> {
        if data.len() != self.len() {
            return Err(EngineError::ShapeMismatch {
                shape: self.shape.clone(),
                len: self.len(),
                got: data.len(),
            });
        }
        queue.write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies the contents back to the host. Never blocks in the browser; natively
    /// it waits for the GPU inside.
    pub async fn read(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<f32>, EngineError> {
        Ok(bytemuck::cast_slice(&self.read_words(device, queue).await?).to_vec())
    }

    /// Reads a tensor of u32 values.
    pub async fn read_u32(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<u32>, EngineError> {
        self.read_words(device, queue).await
    }

    /// Blocking [`Tensor::read`] for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<f32>, EngineError> {
        pollster::block_on(self.read(device, queue))
    }

    /// Blocking [`Tensor::read_u32`] for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32_blocking(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<u32>, EngineError> {
        pollster::block_on(self.read_u32(device, queue))
    }

    async fn read_words(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Vec<u32>, EngineError> {
        read_buffer(device, queue, &self.buffer, self.offset, self.len()).await
    }
}

/// Reads `len` 4-byte words of `buffer` (which needs COPY_SRC) from byte `offset`.
pub async fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<u32>, EngineError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let staging = staging_buffer(device, len);
    let encoder = device.create_command_encoder(&Default::default());
    read_through(device, queue, encoder, &[(buffer, offset, len)], &staging).await
}

/// A buffer to read `len` words back through, reusable by [`read_tensors`].
pub fn staging_buffer(device: &wgpu::Device, len: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read-back"),
        size: (len.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Reads several tensors back, one after the other, through a staging buffer
/// kept by the caller, so that periodic read-backs (loss, accuracy) allocate
/// nothing.
pub async fn read_tensors(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    tensors: &[&Tensor],
    staging: &wgpu::Buffer,
) -> Result<Vec<u32>, EngineError> {
    let encoder = device.create_command_encoder(&Default::default());
    read_tensors_after(device, queue, encoder, tensors, staging).await
}

/// As [`read_tensors`], after the commands already recorded in `encoder`:
/// work and read-back in one submission.
pub async fn read_tensors_after(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    encoder: wgpu::CommandEncoder,
    tensors: &[&Tensor],
    staging: &wgpu::Buffer,
) -> Result<Vec<u32>, EngineError> {
    let ranges: Vec<_> = tensors.iter().map(|t| (&t.buffer, t.offset, t.len())).collect();
    read_through(device, queue, encoder, &ranges, staging).await
}

async fn read_through(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    mut encoder: wgpu::CommandEncoder,
    ranges: &[(&wgpu::Buffer, u64, usize)],
    staging: &wgpu::Buffer,
) -> Result<Vec<u32>, EngineError> {
    let bytes: u64 = ranges.iter().map(|r| (r.2 * 4) as u64).sum();
    assert!(bytes <= staging.size(), "staging buffer too small for the read-back");
    let mut at = 0;
    for &(buffer, offset, len) in ranges {
        encoder.copy_buffer_to_buffer(buffer, offset, staging, at, (len * 4) as u64);
        at += (len * 4) as u64;
    }
    queue.submit([encoder.finish()]);
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, ..bytes, move |result| {
        // The receiver only disappears if the caller dropped the future.
        let _ = sender.send(result);
    });
    #[cfg(not(target_arch = "wasm32"))]
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| EngineError::ReadBack(e.to_string()))?;
    // The browser maps the buffer on its own; only native code polls.
    #[cfg(target_arch = "wasm32")]
    let _ = device;
    receiver
        .await
        .map_err(|_| EngineError::ReadBack("the device was lost before the buffer was mapped".into()))?
        .map_err(|e| EngineError::ReadBack(e.to_string()))?;
    let values = {
        let view = staging
            .get_mapped_range(..bytes)
            .map_err(|e| EngineError::ReadBack(e.to_string()))?;
        bytemuck::cast_slice::<u8, u32>(&view).to_vec()
    };
    staging.unmap();
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context;

    /// Reads a mirror's texels back (row-major, MIRROR_WIDTH per row).
    fn read_mirror(device: &wgpu::Device, queue: &wgpu::Queue, tensor: &Tensor) -> Vec<f32> {
        let texture = &tensor.mirror.get().expect("bound").texture;
        let size = texture.size();
        let len = (size.width * size.height) as usize;
        let staging = Tensor::zeros(device, &[len]).unwrap();
        let mut encoder = device.create_command_encoder(&Default::default());
        tensor.record_mirror_copy(&mut encoder);
        encoder.copy_texture_to_buffer(
            texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &staging.buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(MIRROR_WIDTH * 4),
                    rows_per_image: None,
                },
            },
            size,
        );
        queue.submit([encoder.finish()]);
        staging.read_blocking(device, queue).unwrap()
    }

    #[test]
    fn mirror_wgsl_indexes_rows_as_wide_as_the_textures() {
        assert!(MIRROR_WGSL.contains(&format!("const MIRROR_WIDTH: u32 = {MIRROR_WIDTH}u;")));
    }

    #[test]
    fn texture_mirror_holds_a_views_elements_in_whole_rows_and_a_partial_last_one() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let start = VIEW_ALIGNMENT;
        let width = MIRROR_WIDTH as usize;
        for len in [100, width, 2 * width + 100] {
            let data: Vec<f32> = (0..start + len + 7).map(|i| i as f32).collect();
            let whole = Tensor::from_slice(device, &[data.len()], &data).unwrap();
            let view = whole.view(start, &[len]);
            view.mirror_view(device);
            let texels = read_mirror(device, queue, &view);
            assert_eq!(texels.len(), len.div_ceil(width) * width, "{len} elements: mirror size");
            assert_eq!(
                &texels[..len],
                &data[start..start + len],
                "{len} elements: mirrored values"
            );
            // The rest of the last row is never written: zero, as created.
            assert!(texels[len..].iter().all(|&v| v == 0.0), "{len} elements: past the end");
        }
    }
}
