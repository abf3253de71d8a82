//! Typed errors of the engine.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(
        "no GPU adapter found ({0}); on Linux install Mesa's lavapipe (mesa-vulkan-drivers) for a CPU Vulkan adapter"
    )]
    NoAdapter(String),
    #[error("the adapter refused to create a device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),
    #[error("tensor of shape {shape:?} holds {len} elements but {got} values were given")]
    ShapeMismatch { shape: Vec<usize>, len: usize, got: usize },
    #[error("tensor of {bytes} bytes exceeds the device's {limit}-byte storage binding limit; split the batch")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("reading a buffer back from the GPU failed: {0}")]
    ReadBack(String),
    #[error("GPU device error: {0}")]
    Device(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}
