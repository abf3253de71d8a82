//! The fixed set of pipelines, created once, early, and the execution context.

use crate::layers::batch_norm::BatchNormKernels;
use crate::layers::conv2d::Conv2dKernels;
use crate::layers::gemm::GemmKernels;
use crate::layers::linear::LinearKernels;
use crate::layers::loss::LossKernels;
use crate::layers::pool::PoolKernels;
use crate::layers::relu::ReluKernels;
use crate::layers::residual::ResidualKernels;
use crate::layers::sgd::SgdKernels;
use crate::{AdapterSummary, Dispatch, EngineError, Gpu};

/// How the heavy kernels (GEMM, convolutions) are tiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Large per-invocation register tiles, no barriers: CPU adapters (lavapipe,
    /// SwiftShader), where `workgroupBarrier()` is very expensive.
    RegisterTile,
    /// Tiles staged in workgroup memory: real GPUs.
    WorkgroupTile,
}

impl Variant {
    /// The variant for an adapter; `RESNET_KERNEL_VARIANT=register|workgroup`
    /// overrides it natively.
    pub fn for_adapter(adapter: &AdapterSummary) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        match std::env::var("RESNET_KERNEL_VARIANT").as_deref() {
            Ok("register") => return Self::RegisterTile,
            Ok("workgroup") => return Self::WorkgroupTile,
            _ => {}
        }
        if adapter.is_cpu() {
            Self::RegisterTile
        } else {
            Self::WorkgroupTile
        }
    }
}

/// Every compute pipeline the engine uses, one field per layer family.
pub struct Kernels {
    pub variant: Variant,
    pub relu: ReluKernels,
    pub batch_norm: BatchNormKernels,
    pub conv2d: Conv2dKernels,
    pub gemm: GemmKernels,
    pub residual: ResidualKernels,
    pub pool: PoolKernels,
    pub linear: LinearKernels,
    pub loss: LossKernels,
    pub sgd: SgdKernels,
}

impl Kernels {
    pub fn new(device: &wgpu::Device, variant: Variant) -> Self {
        Self {
            variant,
            relu: ReluKernels::new(device),
            batch_norm: BatchNormKernels::new(device),
            conv2d: Conv2dKernels::new(device, variant),
            gemm: GemmKernels::new(device, variant),
            residual: ResidualKernels::new(device),
            pool: PoolKernels::new(device),
            linear: LinearKernels::new(device),
            loss: LossKernels::new(device),
            sgd: SgdKernels::new(device),
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
        let kernels = Kernels::new(&gpu.device, Variant::for_adapter(&gpu.adapter));
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
