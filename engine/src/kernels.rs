//! The fixed set of kernels (each shader module and pipeline created once,
//! when it is first bound) and the execution context.

use crate::layers::batch_norm::BatchNormKernels;
use crate::layers::conv2d::{CONV2D_WGSL, Conv2dKernels};
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
    /// Large per-invocation register tiles (16x24 outputs), no barriers,
    /// weights shared through subgroups where the device has them: CPU
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

    /// The variant for an adapter by its kind, or `RESNET_KERNEL_VARIANT`'s
    /// (`register|workgroup|compact`) natively. Browsers pick their own (see
    /// `resnet-web`); `resnet-native` measures them instead.
    pub fn for_adapter(adapter: &AdapterSummary) -> Self {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(variant) = std::env::var("RESNET_KERNEL_VARIANT")
            .ok()
            .and_then(|name| Self::parse(&name))
        {
            return variant;
        }
        if adapter.is_cpu() {
            Self::RegisterTile
        } else {
            Self::WorkgroupTile
        }
    }

    /// The short name `RESNET_KERNEL_VARIANT` and caches use.
    pub fn name(self) -> &'static str {
        match self {
            Self::RegisterTile => "register",
            Self::WorkgroupTile => "workgroup",
            Self::CompactTile => "compact",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Identifies the variant-specific kernels' code (the convolutions; the network
/// uses no other tiled kernel) and the engine's version: measurements of the
/// variants made with other kernels are stale.
pub fn tiled_kernels_fingerprint() -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = CONV2D_WGSL.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("engine {} conv2d.wgsl {hash:016x}", env!("CARGO_PKG_VERSION"))
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
            batch_norm: BatchNormKernels::new(device, variant),
            conv2d: Conv2dKernels::new(device, variant, subgroups),
            gemm: GemmKernels::new(device, variant, subgroups),
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
    /// The kernels [`Variant::for_adapter`] picks.
    pub fn new(gpu: Gpu) -> Self {
        let variant = Variant::for_adapter(&gpu.adapter);
        Self::with_variant(gpu, variant)
    }

    pub fn with_variant(gpu: Gpu, variant: Variant) -> Self {
        let kernels = Kernels::new(&gpu.device, variant);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_round_trip_and_unknown_names_are_rejected() {
        for variant in Variant::ALL {
            assert_eq!(Variant::parse(variant.name()), Some(variant));
        }
        assert_eq!(Variant::parse("RegisterTile"), None);
        assert_eq!(Variant::parse(""), None);
    }

    #[test]
    fn tiled_kernels_fingerprint_is_stable_and_names_the_version() {
        let fingerprint = tiled_kernels_fingerprint();
        assert_eq!(fingerprint, tiled_kernels_fingerprint());
        assert!(fingerprint.contains(env!("CARGO_PKG_VERSION")), "{fingerprint}");
        assert_ne!(
            fingerprint.rsplit(' ').next(),
            Some("cbf29ce484222325"),
            "hash of nothing"
        );
    }
}
