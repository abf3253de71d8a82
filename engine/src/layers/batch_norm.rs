//! Batch normalisation (Ioffe & Szegedy 2015) of NCHW tensors, per channel c over
//! its n = N*H*W values: `y = gamma * (x - mean) / sqrt(var + eps) + beta`.
//!
//! Training mode uses the batch mean and biased variance and updates the running
//! statistics PyTorch's way (`r = (1 - momentum) r + momentum * stat`, the running
//! variance tracking the unbiased batch variance); eval mode uses the running
//! statistics. The backward pass differentiates through the batch statistics:
//! `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
//! `dx = gamma * inv_std * (dy - dbeta / n - xhat * dgamma / n)`.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, MAX_WORKGROUPS_PER_DIMENSION, grid_1d, shader_module, with_block};
use crate::tensor::with_mirror_wgsl;
use crate::{Dispatch, Kernels, Tensor, Variant};

/// Values per invocation of the element-wise passes (see `plane_run` in the
/// WGSL) on GPUs, where more would leave too few invocations in flight.
const RUN: usize = 16;
/// The same on CPU adapters (the register- and compact-tile variants), which
/// pay per invocation for its channel's constants and its index arithmetic:
/// on llvmpipe, at ResNet-20's shapes, the normalising passes took 0.74-0.84x
/// the time, and the backward-data passes 0.81-0.9x, with runs of 256 values
/// instead of 16.
const CPU_RUN: usize = 256;

/// Workgroup size of the passes over a convolution's partial sums.
const PARTIALS_WORKGROUP: u32 = 8;

/// The four passes, each as a scalar kernel and a `_vec4` twin that binds
/// the same tensors and serves planes of a multiple of 4 values.
pub struct BatchNormKernels {
    statistics: [Kernel; 2],
    /// The statistics from a convolution's partial sums (see
    /// [`batch_norm_forward_train`]).
    statistics_partials: Kernel,
    normalize: [Kernel; 2],
    backward_reduce: [Kernel; 2],
    /// The backward reduce from a convolution's partial sums (see
    /// [`batch_norm_backward`]).
    backward_reduce_partials: Kernel,
    backward_data: [Kernel; 2],
    /// Values per invocation of the element-wise passes.
    run: usize,
}

/// The register-tile variant's vec4 inputs of the element-wise passes, in
/// place of batch_norm.wgsl's: through texture mirrors (see
/// [`crate::tensor::MIRROR_WGSL`]), as that variant's convolutions read
/// their sources: in ResNet-20's training step on llvmpipe the backward-data
/// passes took 0.68x the time, the normalising passes 0.82x, copies included.
const MIRRORED_VEC4_INPUTS: &str = "@group(0) @binding(11) var normalize_x4: texture_2d<f32>;
@group(0) @binding(16) var normalize_residual4: texture_2d<f32>;
@group(0) @binding(31) var data_x4: texture_2d<f32>;
@group(0) @binding(32) var data_dy4: texture_2d<f32>;

fn normalize_x_at(i: u32) -> vec4<f32> {
    return mirrored_vec4(normalize_x4, i);
}

fn normalize_residual_at(i: u32) -> vec4<f32> {
    return mirrored_vec4(normalize_residual4, i);
}

fn data_x_at(i: u32) -> vec4<f32> {
    return mirrored_vec4(data_x4, i);
}

fn data_dy_at(i: u32) -> vec4<f32> {
    return mirrored_vec4(data_dy4, i);
}
";

/// batch_norm.wgsl, with its vec4 inputs read through texture mirrors when
/// `mirrored`.
pub fn batch_norm_source(mirrored: bool) -> String {
    let source = include_str!("../../../shaders/batch_norm.wgsl");
    if mirrored {
        with_mirror_wgsl(with_block(source, "vec4 inputs", MIRRORED_VEC4_INPUTS))
    } else {
        source.to_string()
    }
}

impl BatchNormKernels {
    pub fn new(device: &wgpu::Device, variant: Variant) -> Self {
        let mirrored = variant == Variant::RegisterTile;
        let module = shader_module("batch_norm", batch_norm_source(mirrored));
        let pair = |entry_point: &'static str, vec4_entry_point: &'static str, first_binding| {
            [
                Kernel::new(device, &module, entry_point, first_binding),
                Kernel::new(device, &module, vec4_entry_point, first_binding),
            ]
        };
        // The vec4 twins whose inputs the register tile mirrors.
        let mirrored_pair = |entry_point, vec4_entry_point, first_binding, bindings| {
            let [scalar, vec4] = pair(entry_point, vec4_entry_point, first_binding);
            [
                scalar,
                vec4.with_mirrored_bindings(if mirrored { bindings } else { &[] }),
            ]
        };
        Self {
            statistics: pair("batch_norm_statistics", "batch_norm_statistics_vec4", 0),
            statistics_partials: Kernel::new(device, &module, "batch_norm_statistics_partials", 0),
            normalize: mirrored_pair("batch_norm_normalize", "batch_norm_normalize_vec4", 10, &[11, 16]),
            backward_reduce: pair("batch_norm_backward_reduce", "batch_norm_backward_reduce_vec4", 20),
            backward_reduce_partials: Kernel::new(device, &module, "batch_norm_backward_reduce_partials", 40),
            backward_data: mirrored_pair(
                "batch_norm_backward_data",
                "batch_norm_backward_data_vec4",
                30,
                &[31, 32],
            ),
            run: match variant {
                Variant::WorkgroupTile => RUN,
                Variant::RegisterTile | Variant::CompactTile => CPU_RUN,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    pub batch: usize,
    pub channels: usize,
    /// H * W.
    pub spatial: usize,
}

impl BatchNormShape {
    /// Elements of the activation tensor.
    pub fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values each channel's statistics are taken over, N * H * W.
    pub fn count(&self) -> usize {
        self.batch * self.spatial
    }

    /// Index of pixel `pixel` of channel `channel` in image `image`.
    pub fn index(&self, image: usize, channel: usize, pixel: usize) -> usize {
        (image * self.channels + channel) * self.spatial + pixel
    }

    /// `n / (n - 1)`, turning the biased batch variance into the unbiased one that
    /// the running variance tracks. With a single value per channel the unbiased
    /// variance is undefined (PyTorch refuses to train); the biased one (0) is used.
    pub fn unbiased_factor(&self) -> f64 {
        let n = self.count() as f64;
        if self.count() > 1 { n / (n - 1.0) } else { 1.0 }
    }

    /// Panics unless every activation tensor has `len()` elements and every
    /// per-channel tensor `channels`.
    #[track_caller]
    fn check(&self, what: &str, activations: &[&Tensor], per_channel: &[&Tensor]) {
        assert!(self.count() > 0 && self.channels > 0, "{what}: empty shape {self:?}");
        assert!(
            self.channels <= MAX_WORKGROUPS_PER_DIMENSION as usize,
            "{what}: {} channels exceed one workgroup per channel",
            self.channels
        );
        for tensor in activations {
            assert_eq!(
                tensor.len(),
                self.len(),
                "{what}: tensor {:?} vs {self:?}",
                tensor.shape
            );
        }
        for tensor in per_channel {
            assert_eq!(
                tensor.len(),
                self.channels,
                "{what}: per-channel tensor {:?} vs {} channels",
                tensor.shape,
                self.channels
            );
        }
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    /// Of a scalar kernel and its `_vec4` twin, the one for this shape.
    fn pick<'k>(&self, kernels: &'k [Kernel; 2]) -> &'k Kernel {
        &kernels[usize::from(self.spatial.is_multiple_of(4))]
    }

    fn runs_per_plane(&self, run: usize) -> usize {
        self.spatial.div_ceil(run)
    }

    /// The grid of the element-wise passes: one invocation per run of `run` values.
    fn elementwise_grid(&self, run: usize) -> [u32; 3] {
        grid_1d(self.planes() * self.runs_per_plane(run), ELEMENTWISE_WORKGROUP)
    }

    /// One workgroup per channel.
    fn reduce_grid(&self) -> [u32; 3] {
        [self.channels as u32, 1, 1]
    }

    /// The passes over a convolution's partial sums: one invocation per channel.
    fn partials_grid(&self) -> [u32; 3] {
        grid_1d(self.channels, PARTIALS_WORKGROUP)
    }
}

/// Panics unless `partials` holds a convolution's partial sums for `shape`:
/// `[slots, channels, 4]`.
#[track_caller]
fn check_partials(what: &str, shape: BatchNormShape, partials: &Tensor) {
    assert_eq!(
        partials.shape[1..],
        [shape.channels, 4],
        "{what}: partials {:?} vs {} channels",
        partials.shape,
        shape.channels
    );
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StatisticsParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    eps: f32,
    momentum: f32,
    unbiased_factor: f32,
    partials: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormalizeParams {
    channels: u32,
    spatial: u32,
    runs_per_plane: u32,
    planes: u32,
    eps: f32,
    spread_is_variance: u32,
    epilogue: u32,
    run: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardReduceParams {
    batch: u32,
    channels: u32,
    spatial: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReducePartialsParams {
    channels: u32,
    partials: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BackwardDataParams {
    channels: u32,
    spatial: u32,
    runs_per_plane: u32,
    planes: u32,
    inv_count: f32,
    run: u32,
}

/// What follows a batch norm in a residual block, fused into its normalising
/// pass: `y = relu?(batch_norm(x) + residual?)`, so that neither the batch
/// norm's output nor the sum is written and read again. The default is none.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added after normalising (the block's shortcut), of the shape of `y`.
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

/// `EPILOGUE_*` flags of the shader.
const EPILOGUE_RESIDUAL: u32 = 1;
const EPILOGUE_RELU: u32 = 2;

impl Epilogue<'_> {
    fn flags(&self) -> u32 {
        let residual = if self.residual.is_some() { EPILOGUE_RESIDUAL } else { 0 };
        residual | if self.relu { EPILOGUE_RELU } else { 0 }
    }
}

/// What the `spread` tensor of [`normalize`] holds.
#[derive(Clone, Copy)]
enum Spread {
    /// Batch statistics from the training forward pass.
    InvStd,
    /// Running statistics; `eps` is added before the inverse square root.
    Variance,
}

/// `y = (x - mean) * inv_std * gamma + beta`, where `spread` gives `inv_std`,
/// then the epilogue.
#[allow(clippy::too_many_arguments)]
fn normalize(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: BatchNormShape,
    x: &Tensor,
    mean: &Tensor,
    spread: (Spread, &Tensor),
    gamma: &Tensor,
    beta: &Tensor,
    epilogue: Epilogue<'_>,
    y: &Tensor,
    eps: f32,
) -> Dispatch {
    let run = kernels.batch_norm.run;
    let params = NormalizeParams {
        channels: shape.channels as u32,
        spatial: shape.spatial as u32,
        runs_per_plane: shape.runs_per_plane(run) as u32,
        planes: shape.planes() as u32,
        eps,
        spread_is_variance: matches!(spread.0, Spread::Variance) as u32,
        epilogue: epilogue.flags(),
        run: run as u32,
    };
    // Without a residual the binding still needs a buffer: `x` (read-only)
    // stands in, and the shader does not read it.
    let residual = epilogue.residual.unwrap_or(x);
    shape.pick(&kernels.batch_norm.normalize).bind(
        device,
        &params,
        &[x, mean, spread.1, gamma, beta, residual, y],
        shape.elementwise_grid(run),
    )
}

/// Training mode: normalises with the batch statistics (biased variance), writes
/// `saved_mean` and `saved_inv_std` (`[C]`) for the backward pass, and updates
/// `running_mean` / `running_var` in place with `momentum`; `y` gets the
/// epilogue applied. All tensors distinct. The statistics come from `x`, or
/// from `partials` where given: the partial sums that the convolution which
/// wrote `x` left of it
/// ([`crate::layers::conv2d::conv2d_forward_statistics`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_train(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: BatchNormShape,
    x: &Tensor,
    partials: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    saved_mean: &Tensor,
    saved_inv_std: &Tensor,
    epilogue: Epilogue<'_>,
    y: &Tensor,
    momentum: f32,
    eps: f32,
) -> Vec<Dispatch> {
    let activations: Vec<&Tensor> = [x, y].into_iter().chain(epilogue.residual).collect();
    shape.check(
        "batch_norm_forward_train",
        &activations,
        &[gamma, beta, running_mean, running_var, saved_mean, saved_inv_std],
    );
    let params = StatisticsParams {
        batch: shape.batch as u32,
        channels: shape.channels as u32,
        spatial: shape.spatial as u32,
        eps,
        momentum,
        unbiased_factor: shape.unbiased_factor() as f32,
        partials: partials.map_or(0, |t| t.shape[0] as u32),
    };
    let (kernel, source, grid) = match partials {
        Some(partials) => {
            check_partials("batch_norm_forward_train", shape, partials);
            (&kernels.batch_norm.statistics_partials, partials, shape.partials_grid())
        }
        None => (shape.pick(&kernels.batch_norm.statistics), x, shape.reduce_grid()),
    };
    let statistics = kernel.bind(
        device,
        &params,
        &[source, running_mean, running_var, saved_mean, saved_inv_std],
        grid,
    );
    let normalize = normalize(
        device,
        kernels,
        shape,
        x,
        saved_mean,
        (Spread::InvStd, saved_inv_std),
        gamma,
        beta,
        epilogue,
        y,
        eps,
    );
    vec![statistics, normalize]
}

/// Eval mode: normalises with the running statistics, then the epilogue.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_forward_eval(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: BatchNormShape,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    epilogue: Epilogue<'_>,
    y: &Tensor,
    eps: f32,
) -> Dispatch {
    let activations: Vec<&Tensor> = [x, y].into_iter().chain(epilogue.residual).collect();
    shape.check(
        "batch_norm_forward_eval",
        &activations,
        &[gamma, beta, running_mean, running_var],
    );
    normalize(
        device,
        kernels,
        shape,
        x,
        running_mean,
        (Spread::Variance, running_var),
        gamma,
        beta,
        epilogue,
        y,
        eps,
    )
}

/// Backward of [`batch_norm_forward_train`] given its input `x` and saved
/// statistics: overwrites `dx`, `dgamma` and `dbeta`. All tensors distinct.
/// The reduce (`dgamma`, `dbeta`) reads `x` and `dy`, or `partials` where
/// given: the partial sums that the convolution which wrote `dy` left
/// ([`crate::layers::conv2d::conv2d_backward_data_relu`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: BatchNormShape,
    x: &Tensor,
    dy: &Tensor,
    partials: Option<&Tensor>,
    gamma: &Tensor,
    saved_mean: &Tensor,
    saved_inv_std: &Tensor,
    dx: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
) -> Vec<Dispatch> {
    shape.check(
        "batch_norm_backward",
        &[x, dy, dx],
        &[gamma, saved_mean, saved_inv_std, dgamma, dbeta],
    );
    let reduce = match partials {
        Some(partials) => {
            check_partials("batch_norm_backward", shape, partials);
            let params = ReducePartialsParams {
                channels: shape.channels as u32,
                partials: partials.shape[0] as u32,
            };
            kernels.batch_norm.backward_reduce_partials.bind(
                device,
                &params,
                &[partials, saved_mean, saved_inv_std, dgamma, dbeta],
                shape.partials_grid(),
            )
        }
        None => {
            let params = BackwardReduceParams {
                batch: shape.batch as u32,
                channels: shape.channels as u32,
                spatial: shape.spatial as u32,
            };
            shape.pick(&kernels.batch_norm.backward_reduce).bind(
                device,
                &params,
                &[x, dy, saved_mean, saved_inv_std, dgamma, dbeta],
                shape.reduce_grid(),
            )
        }
    };
    let run = kernels.batch_norm.run;
    let data_params = BackwardDataParams {
        channels: shape.channels as u32,
        spatial: shape.spatial as u32,
        runs_per_plane: shape.runs_per_plane(run) as u32,
        planes: shape.planes() as u32,
        inv_count: (1.0 / shape.count() as f64) as f32,
        run: run as u32,
    };
    let data = shape.pick(&kernels.batch_norm.backward_data).bind(
        device,
        &data_params,
        &[x, dy, gamma, saved_mean, saved_inv_std, dgamma, dbeta, dx],
        shape.elementwise_grid(run),
    );
    vec![reduce, data]
}

/// Plain-Rust reference.
pub mod cpu {
    use super::BatchNormShape;

    pub struct BatchNormTrainOutput {
        pub y: Vec<f64>,
        /// Per-channel batch mean.
        pub mean: Vec<f64>,
        /// Per-channel biased batch variance (divided by n).
        pub var: Vec<f64>,
        /// `1 / sqrt(var + eps)`.
        pub inv_std: Vec<f64>,
    }

    /// `f(image, channel, pixel)` for every value of the activation tensor.
    fn for_each_value(shape: BatchNormShape, mut f: impl FnMut(usize, usize, usize)) {
        for image in 0..shape.batch {
            for channel in 0..shape.channels {
                for pixel in 0..shape.spatial {
                    f(image, channel, pixel);
                }
            }
        }
    }

    #[track_caller]
    fn check(shape: BatchNormShape, activations: &[&[f64]], per_channel: &[&[f64]]) {
        assert!(
            activations.iter().all(|a| a.len() == shape.len()),
            "activation length vs {shape:?}"
        );
        assert!(
            per_channel.iter().all(|a| a.len() == shape.channels),
            "per-channel length vs {shape:?}"
        );
    }

    /// `y = gamma * (x - mean) * inv_std + beta` per channel.
    fn normalize(
        shape: BatchNormShape,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        mean: &[f64],
        inv_std: &[f64],
    ) -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for_each_value(shape, |n, c, p| {
            let i = shape.index(n, c, p);
            y[i] = gamma[c] * (x[i] - mean[c]) * inv_std[c] + beta[c];
        });
        y
    }

    pub fn batch_norm_forward_train(
        shape: BatchNormShape,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        eps: f64,
    ) -> BatchNormTrainOutput {
        check(shape, &[x], &[gamma, beta]);
        let n = shape.count() as f64;
        let mut mean = vec![0.0; shape.channels];
        for_each_value(shape, |image, c, p| mean[c] += x[shape.index(image, c, p)] / n);
        let mut var = vec![0.0; shape.channels];
        for_each_value(shape, |image, c, p| {
            var[c] += (x[shape.index(image, c, p)] - mean[c]).powi(2) / n
        });
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let y = normalize(shape, x, gamma, beta, &mean, &inv_std);
        BatchNormTrainOutput { y, mean, var, inv_std }
    }

    /// `r = (1 - momentum) r + momentum * stat`; the variance's statistic is the
    /// unbiased batch variance (the biased one when n = 1, see
    /// [`BatchNormShape::unbiased_factor`]).
    pub fn batch_norm_update_running(
        shape: BatchNormShape,
        mean: &[f64],
        biased_var: &[f64],
        running_mean: &mut [f64],
        running_var: &mut [f64],
        momentum: f64,
    ) {
        check(shape, &[], &[mean, biased_var, running_mean, running_var]);
        for c in 0..shape.channels {
            running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c];
            running_var[c] = (1.0 - momentum) * running_var[c] + momentum * biased_var[c] * shape.unbiased_factor();
        }
    }

    pub fn batch_norm_forward_eval(
        shape: BatchNormShape,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        running_mean: &[f64],
        running_var: &[f64],
        eps: f64,
    ) -> Vec<f64> {
        check(shape, &[x], &[gamma, beta, running_mean, running_var]);
        let inv_std: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        normalize(shape, x, gamma, beta, running_mean, &inv_std)
    }

    /// Gradients `(dx, dgamma, dbeta)` of the training-mode forward pass, which
    /// this recomputes from `x`.
    pub fn batch_norm_backward(
        shape: BatchNormShape,
        x: &[f64],
        dy: &[f64],
        gamma: &[f64],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        check(shape, &[x, dy], &[gamma]);
        let zeros = vec![0.0; shape.channels];
        let forward = batch_norm_forward_train(shape, x, gamma, &zeros, eps);
        let xhat = |i: usize, c: usize| (x[i] - forward.mean[c]) * forward.inv_std[c];
        let mut dgamma = vec![0.0; shape.channels];
        let mut dbeta = vec![0.0; shape.channels];
        for_each_value(shape, |n, c, p| {
            let i = shape.index(n, c, p);
            dbeta[c] += dy[i];
            dgamma[c] += dy[i] * xhat(i, c);
        });
        // y depends on x directly and through mean and var:
        // dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)).
        let count = shape.count() as f64;
        let mut dx = vec![0.0; x.len()];
        for_each_value(shape, |n, c, p| {
            let i = shape.index(n, c, p);
            dx[i] = gamma[c] * forward.inv_std[c] * (dy[i] - dbeta[c] / count - xhat(i, c) * dgamma[c] / count);
        });
        (dx, dgamma, dbeta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;
    use crate::layers::relu;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    const EPS: f64 = 1e-5;

    /// (batch, channels, H*W) of the GPU tests: odd channel counts and maps,
    /// batch 1 and 3, one value per channel, per-invocation shares that cross
    /// planes (37x49 and 300x1 values per channel), ResNet-20's largest
    /// activation; planes of a multiple of 4 values (the `_vec4` kernels) in
    /// shares of 4 values that cross planes (37x6x6) and of one vec4 (1x2x4);
    /// planes of 300 values, which end in a partial run of either length.
    const SHAPES: [(usize, usize, usize); 11] = [
        (1, 3, 25),
        (3, 7, 49),
        (2, 16, 64),
        (1, 5, 1),
        (5, 3, 1),
        (37, 5, 49),
        (300, 3, 1),
        (128, 16, 1024),
        (37, 5, 36),
        (1, 2, 4),
        (2, 3, 300),
    ];

    fn shapes() -> impl Iterator<Item = BatchNormShape> {
        SHAPES.into_iter().map(|(batch, channels, spatial)| BatchNormShape {
            batch,
            channels,
            spatial,
        })
    }

    /// Inputs: activations of mean `center` and std about `spread` (per channel
    /// offsets keep the channels apart), gamma, beta, running statistics, dy.
    struct Inputs {
        x: Vec<f64>,
        gamma: Vec<f64>,
        beta: Vec<f64>,
        running_mean: Vec<f64>,
        running_var: Vec<f64>,
        dy: Vec<f64>,
    }

    fn inputs(rng: &mut Rng, shape: BatchNormShape, center: f64, spread: f64) -> Inputs {
        let offsets = rng.vec(shape.channels, -1.0, 1.0);
        let mut x = vec![0.0; shape.len()];
        for (i, v) in x.iter_mut().enumerate() {
            let c = i / shape.spatial % shape.channels;
            *v = (center + spread * (offsets[c] + rng.normal())) as f32 as f64;
        }
        let c = shape.channels;
        Inputs {
            x,
            gamma: rng.vec(c, 0.5, 1.5),
            beta: rng.vec(c, -0.5, 0.5),
            running_mean: rng.vec(c, -1.0, 1.0),
            running_var: rng.vec(c, 0.5, 2.0),
            dy: rng.vec(shape.len(), -1.0, 1.0),
        }
    }

    /// Runs the training forward, the backward and the eval forward on the GPU and
    /// compares everything with the reference.
    /// Inputs of mean `center` and std `spread`, each channel's first value
    /// moved by `outlier`.
    /// The context's kernels and kernels whose element-wise passes take the
    /// other run length (GPUs' or CPU adapters').
    fn both_run_lengths(ctx: &'static Context) -> [&'static Kernels; 2] {
        static OTHER: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        let other = OTHER.get_or_init(|| {
            let variant = if ctx.kernels.batch_norm.run == RUN {
                Variant::RegisterTile
            } else {
                Variant::WorkgroupTile
            };
            Kernels::new(ctx.device(), variant)
        });
        assert_ne!(ctx.kernels.batch_norm.run, other.batch_norm.run);
        [&ctx.kernels, other]
    }

    fn check_gpu_against_reference(shape: BatchNormShape, center: f64, spread: f64, outlier: f64, seed: u64) {
        let Some(ctx) = context() else { return };
        for kernels in both_run_lengths(ctx) {
            check_kernels_against_reference(ctx, kernels, shape, center, spread, outlier, seed);
        }
    }

    fn check_kernels_against_reference(
        ctx: &Context,
        kernels: &Kernels,
        shape: BatchNormShape,
        center: f64,
        spread: f64,
        outlier: f64,
        seed: u64,
    ) {
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut inp = inputs(&mut Rng::new(seed), shape, center, spread);
        for c in 0..shape.channels {
            inp.x[c * shape.spatial] += outlier;
        }
        let momentum = 0.1;
        let (c, len) = ([shape.channels], [shape.len()]);
        let upload = |shape: &[usize], data: &[f64]| Tensor::from_f64(device, shape, data).unwrap();
        let zeros = |shape: &[usize]| Tensor::zeros(device, shape).unwrap();
        let (x, dy) = (upload(&len, &inp.x), upload(&len, &inp.dy));
        let (gamma, beta) = (upload(&c, &inp.gamma), upload(&c, &inp.beta));
        let running_mean = upload(&c, &inp.running_mean);
        let running_var = upload(&c, &inp.running_var);
        let (saved_mean, saved_inv_std) = (zeros(&c), zeros(&c));
        let (y, y_eval, dx) = (zeros(&len), zeros(&len), zeros(&len));
        let (dgamma, dbeta) = (zeros(&c), zeros(&c));

        let mut dispatches = batch_norm_forward_train(
            device,
            kernels,
            shape,
            &x,
            None,
            &gamma,
            &beta,
            &running_mean,
            &running_var,
            &saved_mean,
            &saved_inv_std,
            Epilogue::default(),
            &y,
            momentum as f32,
            EPS as f32,
        );
        dispatches.extend(batch_norm_backward(
            device,
            kernels,
            shape,
            &x,
            &dy,
            None,
            &gamma,
            &saved_mean,
            &saved_inv_std,
            &dx,
            &dgamma,
            &dbeta,
        ));
        // Eval after the update: it sees the updated running statistics.
        dispatches.push(batch_norm_forward_eval(
            device,
            kernels,
            shape,
            &x,
            &gamma,
            &beta,
            &running_mean,
            &running_var,
            Epilogue::default(),
            &y_eval,
            EPS as f32,
        ));
        ctx.run(&dispatches.iter().collect::<Vec<_>>());

        let want = cpu::batch_norm_forward_train(shape, &inp.x, &inp.gamma, &inp.beta, EPS);
        let (mut want_running_mean, mut want_running_var) = (inp.running_mean.clone(), inp.running_var.clone());
        cpu::batch_norm_update_running(
            shape,
            &want.mean,
            &want.var,
            &mut want_running_mean,
            &mut want_running_var,
            momentum,
        );
        let (want_dx, want_dgamma, want_dbeta) = cpu::batch_norm_backward(shape, &inp.x, &inp.dy, &inp.gamma, EPS);
        let want_eval = cpu::batch_norm_forward_eval(
            shape,
            &inp.x,
            &inp.gamma,
            &inp.beta,
            &want_running_mean,
            &want_running_var,
            EPS,
        );
        let read = |t: &Tensor| t.read_blocking(device, queue).unwrap();
        let what = |name: &str| {
            let run = kernels.batch_norm.run;
            format!("{name} {shape:?} mean {center} std {spread} outlier {outlier} run {run}")
        };
        // Tolerances, measured errors in brackets. f32 rounds to 6e-8 relative.
        // The mean, summed as deviations from a pivot, is compared relative to the
        // spread because normalisation divides its error by the std [one ulp of
        // the mean]. inv_std to 1e-5 [3e-7]: the one-pass E[x^2] - E[x]^2 in f32
        // misses it by 1.4e-4 already on 1x3x5x5 at mean 5, std 0.1, and fails
        // here. Outputs of order 1 get 2e-5 [5e-6 at mean 5, std 0.1, where the
        // ulp of x times gamma / std alone is 4e-6].
        assert_close(&what("saved_mean"), &read(&saved_mean), &want.mean, 1e-5 * spread, 1e-6);
        assert_close(&what("saved_inv_std"), &read(&saved_inv_std), &want.inv_std, 0.0, 1e-5);
        assert_close(&what("y"), &read(&y), &want.y, 2e-5, 2e-5);
        assert_close(
            &what("running_mean"),
            &read(&running_mean),
            &want_running_mean,
            1e-6,
            1e-5,
        );
        assert_close(&what("running_var"), &read(&running_var), &want_running_var, 1e-6, 1e-5);
        assert_close(&what("y eval"), &read(&y_eval), &want_eval, 2e-5, 2e-5);
        // dgamma and dbeta are sums of n terms of order 1: their error grows
        // like sqrt(n) * 6e-8 * |term|, well under 1e-4 * sqrt(n).
        let sum_atol = 1e-4 * (shape.count() as f64).sqrt();
        assert_close(&what("dbeta"), &read(&dbeta), &want_dbeta, sum_atol, 1e-4);
        assert_close(&what("dgamma"), &read(&dgamma), &want_dgamma, sum_atol, 1e-4);
        // dx scales dgamma / n and dbeta / n by gamma * inv_std ~ 1 / std.
        assert_close(&what("dx"), &read(&dx), &want_dx, 1e-4 / spread.min(1.0), 1e-4);
        assert!(read(&y).iter().all(|v| v.is_finite()), "{}: y not finite", what("y"));
    }

    #[test]
    fn batch_norm_gpu_matches_reference_on_unit_scale_inputs() {
        for (seed, shape) in shapes().enumerate() {
            check_gpu_against_reference(shape, 0.0, 1.0, 0.0, seed as u64);
        }
    }

    #[test]
    fn batch_norm_gpu_statistics_stay_accurate_when_mean_dwarfs_std() {
        for (seed, shape) in shapes().enumerate() {
            check_gpu_against_reference(shape, 5.0, 0.1, 0.0, 100 + seed as u64);
        }
    }

    /// The statistics sum deviations from each channel's first value: one
    /// that lies 30 standard deviations out (a hot pixel at the corner) still
    /// leaves them accurate.
    #[test]
    fn batch_norm_gpu_statistics_stay_accurate_when_a_channel_starts_with_an_outlier() {
        for (seed, shape) in shapes().enumerate() {
            check_gpu_against_reference(shape, 5.0, 0.1, 3.0, 200 + seed as u64);
        }
    }

    /// The fused epilogues, in both modes, against the reference batch norm
    /// followed by the residual add and the ReLU; with 7x7 and 6x6 maps (the
    /// scalar and `_vec4` kernels).
    #[test]
    fn batch_norm_epilogues_match_reference_batch_norm_then_add_then_relu() {
        for spatial in [49, 36] {
            check_epilogues(BatchNormShape {
                batch: 3,
                channels: 5,
                spatial,
            });
        }
    }

    fn check_epilogues(shape: BatchNormShape) {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(7);
        let inp = inputs(&mut rng, shape, 0.0, 1.0);
        let shortcut = rng.vec(shape.len(), -1.0, 1.0);
        let (c, len) = ([shape.channels], [shape.len()]);
        let upload = |shape: &[usize], data: &[f64]| Tensor::from_f64(device, shape, data).unwrap();
        let zeros = |shape: &[usize]| Tensor::zeros(device, shape).unwrap();
        let (x, residual) = (upload(&len, &inp.x), upload(&len, &shortcut));
        let (gamma, beta) = (upload(&c, &inp.gamma), upload(&c, &inp.beta));
        let train = cpu::batch_norm_forward_train(shape, &inp.x, &inp.gamma, &inp.beta, EPS).y;
        let eval = cpu::batch_norm_forward_eval(
            shape,
            &inp.x,
            &inp.gamma,
            &inp.beta,
            &inp.running_mean,
            &inp.running_var,
            EPS,
        );
        for (with_residual, relu) in [(false, true), (true, false), (true, true)] {
            let epilogue = Epilogue {
                residual: with_residual.then_some(&residual),
                relu,
            };
            let reference = |y: &[f64]| {
                let sum: Vec<f64> = if with_residual {
                    y.iter().zip(&shortcut).map(|(a, b)| a + b).collect()
                } else {
                    y.to_vec()
                };
                if relu { relu::cpu::relu_forward(&sum) } else { sum }
            };
            let (running_mean, running_var) = (upload(&c, &inp.running_mean), upload(&c, &inp.running_var));
            let (y_train, y_eval) = (zeros(&len), zeros(&len));
            let mut dispatches = vec![batch_norm_forward_eval(
                device,
                &ctx.kernels,
                shape,
                &x,
                &gamma,
                &beta,
                &running_mean,
                &running_var,
                epilogue,
                &y_eval,
                EPS as f32,
            )];
            dispatches.extend(batch_norm_forward_train(
                device,
                &ctx.kernels,
                shape,
                &x,
                None,
                &gamma,
                &beta,
                &running_mean,
                &running_var,
                &zeros(&c),
                &zeros(&c),
                epilogue,
                &y_train,
                0.1,
                EPS as f32,
            ));
            ctx.run(&dispatches.iter().collect::<Vec<_>>());
            let what = |mode: &str| format!("{mode} residual {with_residual} relu {relu} {shape:?}");
            let read = |t: &Tensor| t.read_blocking(device, queue).unwrap();
            assert_close(&what("train"), &read(&y_train), &reference(&train), 2e-5, 2e-5);
            assert_close(&what("eval"), &read(&y_eval), &reference(&eval), 2e-5, 2e-5);
        }
    }

    #[test]
    fn batch_norm_gpu_single_value_per_channel_gives_beta_without_nan() {
        // n = 1: variance 0, xhat 0, y = beta; the running variance takes the
        // biased variance 0 rather than 0/0.
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let shape = BatchNormShape {
            batch: 1,
            channels: 3,
            spatial: 1,
        };
        let x = Tensor::from_slice(device, &[3], &[2.0, -7.0, 0.5]).unwrap();
        let gamma = Tensor::from_slice(device, &[3], &[1.0, 2.0, 3.0]).unwrap();
        let beta = Tensor::from_slice(device, &[3], &[0.25, -0.5, 1.0]).unwrap();
        let running_mean = Tensor::zeros(device, &[3]).unwrap();
        let running_var = Tensor::from_slice(device, &[3], &[1.0; 3]).unwrap();
        let (saved_mean, saved_inv_std, y) = (
            Tensor::zeros(device, &[3]).unwrap(),
            Tensor::zeros(device, &[3]).unwrap(),
            Tensor::zeros(device, &[3]).unwrap(),
        );
        let dispatches = batch_norm_forward_train(
            device,
            &ctx.kernels,
            shape,
            &x,
            None,
            &gamma,
            &beta,
            &running_mean,
            &running_var,
            &saved_mean,
            &saved_inv_std,
            Epilogue::default(),
            &y,
            0.1,
            EPS as f32,
        );
        ctx.run(&dispatches.iter().collect::<Vec<_>>());
        assert_close(
            "y",
            &y.read_blocking(device, queue).unwrap(),
            &[0.25, -0.5, 1.0],
            0.0,
            0.0,
        );
        assert_close(
            "running_var",
            &running_var.read_blocking(device, queue).unwrap(),
            &[0.9; 3],
            1e-7,
            0.0,
        );
        assert_close(
            "running_mean",
            &running_mean.read_blocking(device, queue).unwrap(),
            &[0.2, -0.7, 0.05],
            1e-7,
            1e-6,
        );
    }

    /// Random loss weights `r`, so that `dot(y, r)` has a generic gradient.
    fn loss_weights(rng: &mut Rng, len: usize) -> Vec<f64> {
        rng.vec(len, -1.0, 1.0)
    }

    #[test]
    fn batch_norm_reference_backward_matches_finite_differences() {
        for (seed, shape) in [
            BatchNormShape {
                batch: 2,
                channels: 3,
                spatial: 5,
            },
            BatchNormShape {
                batch: 3,
                channels: 2,
                spatial: 4,
            },
            BatchNormShape {
                batch: 1,
                channels: 2,
                spatial: 9,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let mut rng = Rng::new(10 + seed as u64);
            let inp = inputs(&mut rng, shape, 0.5, 1.0);
            let r = loss_weights(&mut rng, shape.len());
            let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
                dot(&cpu::batch_norm_forward_train(shape, x, gamma, beta, EPS).y, &r)
            };
            let (dx, dgamma, dbeta) = cpu::batch_norm_backward(shape, &inp.x, &r, &inp.gamma, EPS);
            assert_gradient("dx", |x| loss(x, &inp.gamma, &inp.beta), &inp.x, &dx);
            assert_gradient("dgamma", |g| loss(&inp.x, g, &inp.beta), &inp.gamma, &dgamma);
            assert_gradient("dbeta", |b| loss(&inp.x, &inp.gamma, b), &inp.beta, &dbeta);
        }
    }

    #[test]
    fn batch_norm_reference_statistics_and_running_update_follow_pytorch() {
        // Channel 0 holds 1, 2, 3, 4 over two images of two pixels; channel 1 is 10x.
        let shape = BatchNormShape {
            batch: 2,
            channels: 2,
            spatial: 2,
        };
        let x = [1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0];
        let out = cpu::batch_norm_forward_train(shape, &x, &[1.0, 1.0], &[0.0, 0.0], 0.0);
        assert_eq!(out.mean, [2.5, 25.0]);
        assert_eq!(out.var, [1.25, 125.0]);
        let (mut running_mean, mut running_var) = (vec![0.0, 1.0], vec![1.0, 2.0]);
        cpu::batch_norm_update_running(shape, &out.mean, &out.var, &mut running_mean, &mut running_var, 0.1);
        // Unbiased variances 5/3 and 500/3.
        let want_var = [0.9 + 0.1 * 5.0 / 3.0, 1.8 + 0.1 * 500.0 / 3.0];
        for (got, want) in running_mean
            .iter()
            .zip([0.25, 3.4])
            .chain(running_var.iter().zip(want_var))
        {
            assert!((got - want).abs() < 1e-12, "running statistic {got} != {want}");
        }
    }
}
