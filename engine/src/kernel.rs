//! Compute pipelines and recorded dispatches.
//!
//! A [`Kernel`] is one WGSL entry point, compiled once, when it is first
//! bound. Binding it to buffers and a small uniform of parameters gives a
//! [`Dispatch`], which is built once per layer and recorded into a compute
//! pass every step, so a training step creates no GPU objects after warm-up.
//!
//! Pipelines are created at first bind rather than with [`crate::Kernels`]
//! because browsers compile every pipeline created, used or not, before the
//! first dispatch completes (Chromium with SwiftShader: seconds for the
//! training kernels that inference never runs). Shader modules likewise wait
//! for their first pipeline: a browser parses each module created, in order,
//! before it compiles the pipeline that a page needs first.
//!
//! Binding convention: an entry point's uniform parameters sit at binding
//! `first_binding` and its tensors follow in order, as storage buffers or,
//! for the bindings a kernel reads through texture mirrors
//! ([`Kernel::with_mirrored_bindings`]), as textures. Entry points that
//! share a WGSL file use disjoint binding ranges (forward 0.., backward 10..,
//! ...), which every WGSL implementation accepts.

use crate::Tensor;
use bytemuck::Pod;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use wgpu::util::DeviceExt;

/// Workgroup size of the element-wise kernels (one dimension).
pub const ELEMENTWISE_WORKGROUP: u32 = 256;

/// WebGPU's default `maxComputeWorkgroupsPerDimension`.
pub const MAX_WORKGROUPS_PER_DIMENSION: u32 = 65535;

/// The source of one WGSL file, compiled into a shader module when the
/// first pipeline of one of its kernels is created. Its kernels share it.
#[derive(Debug)]
pub struct ShaderModule {
    label: &'static str,
    source: Cow<'static, str>,
    module: OnceLock<wgpu::ShaderModule>,
}

impl ShaderModule {
    fn get(&self, device: &wgpu::Device) -> &wgpu::ShaderModule {
        self.module.get_or_init(|| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(self.label),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(&self.source)),
            })
        })
    }
}

/// The shader module of one WGSL file, created (and validated) when a kernel
/// of it first needs its pipeline.
pub fn shader_module(label: &'static str, source: impl Into<Cow<'static, str>>) -> Arc<ShaderModule> {
    Arc::new(ShaderModule {
        label,
        source: source.into(),
        module: OnceLock::new(),
    })
}

/// `source` as it is, or with `subgroup_loads` in place of its plain loads
/// when `subgroups` (see [`with_subgroup_loads`]).
pub fn module_source(source: &str, subgroup_loads: &str, subgroups: bool) -> String {
    if subgroups {
        with_subgroup_loads(source, subgroup_loads)
    } else {
        source.to_string()
    }
}

/// What browsers need before a module with subgroup operations (see
/// [`with_subgroup_loads`]), which builds for wasm32 put there.
pub const BROWSER_SUBGROUPS_HEADER: &str = "enable subgroups;\ndiagnostic(off, subgroup_uniformity);\n";

/// `source` with the block between its `// BEGIN plain loads` paragraph and
/// `// END plain loads.` replaced by `subgroup_loads`: the kernels' loads
/// through subgroup broadcasts, for devices with WebGPU's `subgroups` feature
/// (subgroups of at least 4 invocations). Browsers need the WGSL `enable`
/// directive for them; naga rejects it (it allows subgroup operations by
/// device feature alone). Browsers also check that broadcasts sit in
/// uniform control flow, and some sit in loops whose bounds come from the
/// invocation id: uniform over each workgroup by construction (its
/// invocations share the bounds), which the analysis cannot see, so that
/// check is turned off.
pub fn with_subgroup_loads(source: &str, subgroup_loads: &str) -> String {
    let enable = if cfg!(target_arch = "wasm32") {
        BROWSER_SUBGROUPS_HEADER
    } else {
        ""
    };
    format!("{enable}{}", with_block(source, "plain loads", subgroup_loads))
}

/// `source` with the block between its `// BEGIN {name}` paragraph (which
/// stays) and `// END {name}.` replaced by `replacement`.
pub fn with_block(source: &str, name: &str, replacement: &str) -> String {
    let begin_marker = format!("// BEGIN {name}");
    let end_marker = format!("// END {name}.");
    let begin = source
        .find(&begin_marker)
        .unwrap_or_else(|| panic!("the shader marks its {name}"));
    // The block starts after the BEGIN comment.
    let block = begin
        + source[begin..]
            .split_inclusive('\n')
            .take_while(|line| line.starts_with("//"))
            .map(str::len)
            .sum::<usize>();
    let end = begin
        + source[begin..]
            .find(&end_marker)
            .unwrap_or_else(|| panic!("the shader ends its {name}"));
    format!("{}{replacement}{}", &source[..block], &source[end..])
}

/// `source` without its blocks named `name`: every run of lines from a
/// `// BEGIN {name}` line to the next `// END {name}.` line, both included.
pub fn without_blocks(source: &str, name: &str) -> String {
    let begin_marker = format!("// BEGIN {name}\n");
    let end_marker = format!("// END {name}.\n");
    let mut kept = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(begin) = rest.find(&begin_marker) {
        let end = rest[begin..]
            .find(&end_marker)
            .unwrap_or_else(|| panic!("the shader ends its {name} block"));
        kept.push_str(&rest[..begin]);
        rest = &rest[begin + end + end_marker.len()..];
    }
    kept.push_str(rest);
    kept
}

#[derive(Clone, Debug)]
pub struct Kernel {
    module: Arc<ShaderModule>,
    /// Created by the first [`Kernel::bind`].
    pipeline: OnceLock<wgpu::ComputePipeline>,
    entry_point: &'static str,
    first_binding: u32,
    /// Bindings that read their tensor through its texture mirror.
    mirrored: &'static [u32],
}

impl Kernel {
    /// The entry point `entry_point` of `module` (validated with the module);
    /// its pipeline is created when it is first bound. `device` is the one it
    /// will be bound on.
    pub fn new(
        _device: &wgpu::Device,
        module: &Arc<ShaderModule>,
        entry_point: &'static str,
        first_binding: u32,
    ) -> Self {
        Self {
            module: Arc::clone(module),
            pipeline: OnceLock::new(),
            entry_point,
            first_binding,
            mirrored: &[],
        }
    }

    /// The same entry point, whose WGSL declares `bindings` as `texture_2d`
    /// and reads their tensors through their texture mirrors (see
    /// [`Tensor::mirror_view`]); its dispatches copy those tensors into
    /// them first.
    pub fn with_mirrored_bindings(self, bindings: &'static [u32]) -> Self {
        Self {
            mirrored: bindings,
            ..self
        }
    }

    pub fn entry_point(&self) -> &'static str {
        self.entry_point
    }

    /// Creates the pipeline now, if not yet: browsers compile it in the
    /// background from here on.
    pub fn prepare(&self, device: &wgpu::Device) {
        self.pipeline(device);
    }

    fn pipeline(&self, device: &wgpu::Device) -> &wgpu::ComputePipeline {
        self.pipeline.get_or_init(|| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(self.entry_point),
                layout: None,
                module: self.module.get(device),
                entry_point: Some(self.entry_point),
                compilation_options: Default::default(),
                cache: None,
            })
        })
    }

    /// Binds `params` (a uniform) and `tensors` (storage, in binding order).
    pub fn bind<P: Pod>(
        &self,
        device: &wgpu::Device,
        params: &P,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Dispatch {
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(self.entry_point),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: self.first_binding,
            resource: uniform.as_entire_binding(),
        }];
        let mut mirrors = Vec::new();
        for (tensor, binding) in tensors.iter().zip(self.first_binding + 1..) {
            let resource = if self.mirrored.contains(&binding) {
                // A tensor bound twice (a stand-in for an unused input) is
                // copied once.
                if !mirrors.iter().any(|m: &Tensor| m.shares_mirror(tensor)) {
                    mirrors.push((*tensor).clone());
                }
                wgpu::BindingResource::TextureView(tensor.mirror_view(device))
            } else {
                tensor.binding()
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        let pipeline = self.pipeline(device);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.entry_point),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            uniform,
            workgroups,
            entry_point: self.entry_point,
            flops: 0.0,
            mirrors,
        }
    }
}

/// One kernel invocation with its bindings, ready to record.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    workgroups: [u32; 3],
    entry_point: &'static str,
    flops: f64,
    /// Tensors it reads through their texture mirrors, copied into them
    /// before it runs.
    mirrors: Vec<Tensor>,
}

impl Dispatch {
    /// The WGSL entry point it runs: what profiles group by.
    pub fn entry_point(&self) -> &'static str {
        self.entry_point
    }

    /// The floating-point operations it does (2 per multiply-add), where
    /// they are counted (the GEMM and convolution kernels); 0 elsewhere.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// Records that it does `flops` floating-point operations.
    pub fn with_flops(mut self, flops: f64) -> Self {
        self.flops = flops;
        self
    }

    /// Replaces the uniform parameters (e.g. a new learning rate) without
    /// creating anything; `params` must be of the type the dispatch was bound with.
    pub fn update_params<P: Pod>(&self, queue: &wgpu::Queue, params: &P) {
        assert_eq!(
            std::mem::size_of::<P>() as u64,
            self.uniform.size(),
            "parameter block size changed"
        );
        queue.write_buffer(&self.uniform, 0, bytemuck::bytes_of(params));
    }

    fn record_in(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Records `dispatches`, in order, into compute passes of `encoder`: one pass,
/// except that the copies into the texture mirrors a dispatch reads go
/// between passes, just before it. WebGPU orders the commands of an encoder,
/// so each dispatch sees what the previous ones wrote.
pub fn record<'a>(encoder: &mut wgpu::CommandEncoder, dispatches: impl IntoIterator<Item = &'a Dispatch>) {
    let mut pass: Option<wgpu::ComputePass<'static>> = None;
    for dispatch in dispatches {
        if !dispatch.mirrors.is_empty() {
            // Copies are not allowed inside a compute pass.
            drop(pass.take());
            for tensor in &dispatch.mirrors {
                tensor.record_mirror_copy(encoder);
            }
        }
        let pass = pass.get_or_insert_with(|| encoder.begin_compute_pass(&Default::default()).forget_lifetime());
        dispatch.record_in(pass);
    }
}

/// Records dispatches, in order, into a new command buffer (see [`record`])
/// and submits it.
pub fn submit(device: &wgpu::Device, queue: &wgpu::Queue, dispatches: &[&Dispatch]) {
    let mut encoder = device.create_command_encoder(&Default::default());
    record(&mut encoder, dispatches.iter().copied());
    queue.submit([encoder.finish()]);
}

/// Runs `work`, and if the device rejected anything it was asked to do
/// meanwhile (an invalid pipeline, a bind group or a submission that fails
/// validation), returns that as [`crate::EngineError::Device`]. Without this a
/// browser only logs the error to its console, and the results come back as
/// zeros; natively wgpu would panic.
pub async fn checked_by_device<T>(
    device: &wgpu::Device,
    work: impl Future<Output = Result<T, crate::EngineError>>,
) -> Result<T, crate::EngineError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = work.await;
    match scope.pop().await {
        Some(rejected) => Err(crate::EngineError::Device(rejected.to_string())),
        None => result,
    }
}

/// The device's verdict, still in flight, on work done in an error scope: the
/// first error it rejected, if any.
#[cfg(not(target_arch = "wasm32"))]
pub type DeviceVerdict = std::pin::Pin<Box<dyn Future<Output = Option<wgpu::Error>> + Send>>;
#[cfg(target_arch = "wasm32")]
pub type DeviceVerdict = std::pin::Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Runs `work` in an error scope, as [`checked_by_device`], without waiting
/// for the verdict: in a browser that wait lasts until the GPU process has
/// compiled every pipeline created before.
pub fn with_device_verdict<T>(device: &wgpu::Device, work: impl FnOnce() -> T) -> (T, DeviceVerdict) {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = work();
    (result, Box::pin(scope.pop()))
}

/// Waits until all work submitted to `device` has finished (native only;
/// the browser never blocks, it awaits read-backs instead).
#[cfg(not(target_arch = "wasm32"))]
pub fn wait(device: &wgpu::Device) -> Result<(), crate::EngineError> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| crate::EngineError::Device(e.to_string()))
}

/// The time of each of `dispatches`, run in order, each in its own command
/// buffer that is waited for: a profile (the sum exceeds the time of one
/// command buffer by the per-submission overhead).
#[cfg(not(target_arch = "wasm32"))]
pub fn profile<'a>(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
) -> Result<Vec<(&'a Dispatch, std::time::Duration)>, crate::EngineError> {
    // Work submitted earlier must not be counted against the first dispatch.
    wait(device)?;
    dispatches
        .into_iter()
        .map(|dispatch| {
            let start = std::time::Instant::now();
            submit(device, queue, &[dispatch]);
            wait(device)?;
            Ok((dispatch, start.elapsed()))
        })
        .collect()
}

/// A grid of workgroups covering `invocations` threads of `workgroup_size`,
/// spread over x and y to stay under the per-dimension limit. Shaders recover the
/// linear index as `gid.x + gid.y * num_workgroups.x * workgroup_size`.
pub fn grid_1d(invocations: usize, workgroup_size: u32) -> [u32; 3] {
    let groups = invocations.div_ceil(workgroup_size as usize).max(1) as u32;
    if groups <= MAX_WORKGROUPS_PER_DIMENSION {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(MAX_WORKGROUPS_PER_DIMENSION);
        [groups.div_ceil(y), y, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_blocks_drops_every_block_of_that_name_and_keeps_the_others() {
        let source = "a\n// BEGIN x tile\nb\n// END x tile.\nc\n// BEGIN y tile\nd\n// END y tile.\n// BEGIN x tile\ne\n// END x tile.\nf\n";
        assert_eq!(
            without_blocks(source, "x tile"),
            "a\nc\n// BEGIN y tile\nd\n// END y tile.\nf\n"
        );
        assert_eq!(without_blocks(source, "z tile"), source);
    }

    #[test]
    #[should_panic(expected = "the shader ends its x tile block")]
    fn without_blocks_rejects_a_block_without_its_end() {
        without_blocks("// BEGIN x tile\nb\n", "x tile");
    }

    #[test]
    fn grid_1d_covers_every_invocation_within_limits() {
        for n in [1usize, 255, 256, 257, 65535 * 256, 65535 * 256 + 1, 100_000_000] {
            let [x, y, z] = grid_1d(n, 256);
            assert!(x <= MAX_WORKGROUPS_PER_DIMENSION && y <= MAX_WORKGROUPS_PER_DIMENSION && z == 1);
            assert!(x as usize * y as usize * 256 >= n, "n={n} grid={x}x{y}");
        }
    }

    #[test]
    fn checked_by_device_and_with_device_verdict_return_what_the_device_rejected() {
        let Some(ctx) = crate::testing::context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let x = Tensor::from_slice(device, &[4], &[1.0, -2.0, 3.0, -4.0]).unwrap();
        let y = Tensor::zeros(device, &[4]).unwrap();
        let relu = crate::layers::relu::relu_forward(device, &ctx.kernels, &x, &y);
        let run = || {
            checked_by_device(device, async {
                submit(device, queue, &[&relu]);
                Ok(())
            })
        };
        assert!(pollster::block_on(run()).is_ok());
        // Submitting work over a destroyed buffer fails WebGPU's validation.
        y.buffer.destroy();
        let rejected = pollster::block_on(run());
        assert!(
            matches!(&rejected, Err(crate::EngineError::Device(m)) if m.contains("destroyed")),
            "{rejected:?}"
        );
        let ((), verdict) = with_device_verdict(device, || submit(device, queue, &[&relu]));
        let rejected = pollster::block_on(verdict);
        assert!(rejected.is_some_and(|e| e.to_string().contains("destroyed")));
    }
}
