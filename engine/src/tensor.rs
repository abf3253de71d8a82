//! Tensors on the GPU: 4-byte elements (f32, or u32 for labels and counts)
//! in a buffer, possibly a view at an offset into a larger one (all parameters
//! of a network live in one flat buffer so that one SGD dispatch updates them).
//!
//! Layout: NCHW, row-major. PyTorch weights (OIHW) and activations (NCHW) then
//! import and export as a plain copy, bit-exact. The kernels turn convolutions
//! into GEMMs whose long dimension is the output pixels of one image, which are
//! contiguous in NCHW, so vector loads along pixels stay unit-stride.

use crate::EngineError;
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
