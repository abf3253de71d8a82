//! Adapter and device setup, kept apart from execution.

use crate::EngineError;

/// What the engine runs on, for reports and benchmarks.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
}

impl AdapterSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        }
    }

    /// CPU adapters (lavapipe, SwiftShader) want barrier-free register tiles;
    /// real GPUs want workgroup-memory tiles.
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu" || self.name.contains("llvmpipe") || self.name.contains("SwiftShader")
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, " [{}]", self.driver)?;
        }
        Ok(())
    }
}

/// A device and its queue, with a description of the adapter they came from.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
}

impl Gpu {
    /// Opens the best adapter on any backend wgpu was built with (honouring
    /// `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`), asking only for
    /// WebGPU's default limits and its optional `subgroups` feature, so that
    /// whatever runs here runs in a browser too.
    pub async fn new() -> Result<Self, EngineError> {
        Self::with_backends(wgpu::Backends::all().with_env()).await
    }

    /// As [`Gpu::new`], restricted to the given backends.
    pub async fn with_backends(backends: wgpu::Backends) -> Result<Self, EngineError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let power_preference = wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference,
                ..Default::default()
            })
            .await
            .map_err(|e| EngineError::NoAdapter(format!("{e} (backends: {backends:?})")))?;
        let info = adapter.get_info();
        let summary = AdapterSummary::from_info(&info);
        // Subgroups where available (the compact kernels use them, with at
        // least 4 invocations as in WebGPU); an optional feature in WebGPU,
        // so nothing depends on them.
        let subgroups = if info.subgroup_min_size >= 4 {
            adapter.features() & wgpu::Features::SUBGROUP
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("resnet engine"),
                required_limits: wgpu::Limits::default(),
                required_features: subgroups,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            device,
            queue,
            adapter: summary,
        })
    }

    /// Blocking [`Gpu::new`] for native code.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self, EngineError> {
        pollster::block_on(Self::new())
    }

    /// Waits until all submitted work has finished (native only; the browser
    /// never blocks, it awaits read-backs instead).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<(), EngineError> {
        crate::kernel::wait(&self.device)
    }
}
