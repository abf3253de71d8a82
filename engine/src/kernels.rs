//! The fixed set of kernels (shader modules created early, each pipeline
//! compiled once, at its first bind) and the execution context.

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
    /// Large per-invocation register tiles (16x16 outputs), no barriers: CPU
    /// adapters natively (lavapipe), where `workgroupBarrier()` is very
    /// expensive.
    RegisterTile,
    /// Tiles staged in workgroup memory: real GPUs.
    WorkgroupTile,
    /// Small register tiles (8x8 outputs per invocation), no barriers, no
    /// branches in loops, weights shared through subgroups where the device
    /// has them: CPU adapters in browsers (SwiftShader), whose 4-wide code
    /// runs the register tiles slowly and takes seconds to compile them.
    /// Quick to compile anywhere.
    CompactTile,
}

impl Variant {
    /// Every variant, for tests and benchmarks.
    pub const ALL: [Variant; 3] = [Variant::RegisterTile, Variant::WorkgroupTile, Variant::CompactTile];

    /// The variant for an adapter; `RESNET_KERNEL_VARIANT=register|workgroup|compact`
    /// overrides it natively. Browsers pick their own (see `resnet-web`).
    pub fn for_adapter(adapter: &AdapterSummary) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        match std::env::var("RESNET_KERNEL_VARIANT").as_deref() {
            Ok("register") => return Self::RegisterTile,
            Ok("workgroup") => return Self::WorkgroupTile,
            Ok("compact") => return Self::CompactTile,
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
    /// The kernels of `variant`, using subgroup operations where `device` has
    /// the feature.
    pub fn new(device: &wgpu::Device, variant: Variant) -> Self {
        Self::with_subgroups(device, variant, device.features().contains(wgpu::Features::SUBGROUP))
    }

    /// As [`Kernels::new`], saying whether the device has WebGPU's `subgroups`
    /// feature: in browsers wgpu neither requests nor reports it (see
    /// `resnet-web`), natively `false` tests the kernels without subgroups.
    pub fn with_subgroups(device: &wgpu::Device, variant: Variant, subgroups: bool) -> Self {
        Self {
            variant,
            relu: ReluKernels::new(device),
            batch_norm: BatchNormKernels::new(device),
            conv2d: Conv2dKernels::new(device, variant, subgroups),
            gemm: GemmKernels::new(device, variant),
            residual: ResidualKernels::new(device),
            pool: PoolKernels::new(device),
            linear: LinearKernels::new(device),
            loss: LossKernels::new(device),
            sgd: SgdKernels::new(device),
        }
    }

    /// Creates the pipeline of the fused convolution, the bulk of every folded
    /// ResNet's inference and its slowest pipeline to compile, ahead of the
    /// others: a browser compiles it in the background while the caller goes
    /// on (e.g. downloads the weights).
    pub fn prepare_inference(&self, device: &wgpu::Device) {
        self.conv2d.prepare_fused(device);
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
