//! The fixed set of pipelines, created once, early, and the execution context.

use crate::layers::relu::ReluKernels;
use crate::{Dispatch, EngineError, Gpu};

/// Every compute pipeline the engine uses, one field per layer family.
pub struct Kernels {
    pub relu: ReluKernels,
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            relu: ReluKernels::new(device),
        }
    }
}

/// A device with its pipelines: what every part of the engine runs on.
pub struct Context {
    pub gpu: Gpu,
    pub kernels: Kernels,
}

impl Context {
    pub fn new(gpu: Gpu) -> Self {
        let kernels = Kernels::new(&gpu.device);
        Self { gpu, kernels }
    }

    /// Opens the default adapter and creates all pipelines.
    pub async fn create() -> Result<Self, EngineError> {
        Ok(Self::new(Gpu::new().await?))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.gpu.queue
    }

    /// Records `dispatches` in order into one command buffer and submits it.
    pub fn run(&self, dispatches: &[&Dispatch]) {
        crate::kernel::submit(self.device(), self.queue(), dispatches);
    }
}
