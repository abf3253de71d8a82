//! Max pooling (the ImageNet stem's 3x3/2 pool) and global average pooling
//! (before the classifier), forward and backward, NCHW.
//!
//! Max pooling follows PyTorch: output size `floor((in + 2 pad - kernel) /
//! stride) + 1`, padding never wins (it counts as -inf), and the gradient goes to
//! the first maximum of a window in row-major order. The GPU backward is a
//! gather: one invocation per stride x stride cell of inputs recomputes the
//! argmax of each window overlapping the cell, so it needs no atomics and no
//! stored indices.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct PoolKernels {
    max_forward: Kernel,
    max_forward_3x3: Kernel,
    max_backward: Kernel,
    avg_forward: Kernel,
    avg_backward: Kernel,
}

impl PoolKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("pool", include_str!("../../../shaders/pool.wgsl"));
        Self {
            max_forward: Kernel::new(device, &module, "max_pool_forward", 0),
            max_forward_3x3: Kernel::new(device, &module, "max_pool_forward_3x3", 0),
            max_backward: Kernel::new(device, &module, "max_pool_backward", 10),
            avg_forward: Kernel::new(device, &module, "global_avg_pool_forward", 20),
            avg_backward: Kernel::new(device, &module, "global_avg_pool_backward", 30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolShape {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPoolShape {
    pub fn out_h(&self) -> usize {
        self.pooled(self.in_h)
    }

    pub fn out_w(&self) -> usize {
        self.pooled(self.in_w)
    }

    /// PyTorch's floor formula (`ceil_mode=False`).
    fn pooled(&self, size: usize) -> usize {
        assert!(
            self.kernel > 0 && self.stride > 0,
            "max pool: kernel and stride must be positive: {self:?}"
        );
        // PyTorch's rule; it guarantees every window holds at least one input.
        assert!(
            2 * self.pad <= self.kernel,
            "max pool: pad must be at most kernel / 2: {self:?}"
        );
        assert!(
            size + 2 * self.pad >= self.kernel,
            "max pool: padded input smaller than the kernel: {self:?}"
        );
        (size + 2 * self.pad - self.kernel) / self.stride + 1
    }

    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    fn input_len(&self) -> usize {
        self.planes() * self.in_h * self.in_w
    }

    fn output_len(&self) -> usize {
        self.planes() * self.out_h() * self.out_w()
    }

    fn params(&self) -> MaxPoolParams {
        MaxPoolParams {
            planes: self.planes() as u32,
            in_h: self.in_h as u32,
            in_w: self.in_w as u32,
            out_h: self.out_h() as u32,
            out_w: self.out_w() as u32,
            kernel: self.kernel as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MaxPoolParams {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
}

#[track_caller]
fn assert_len(what: &str, tensor: &Tensor, len: usize) {
    assert_eq!(
        tensor.len(),
        len,
        "{what}: tensor of shape {:?} should hold {len} elements",
        tensor.shape
    );
}

/// The kernel that [`max_pool_forward`] runs for `shape`: 3x3 windows
/// have one of their own, unrolled (on SwiftShader the ImageNet stem's pool
/// took 0.53-0.56x the general loop's time: 9.7-9.9 against 17.8-18.2 ms in
/// ResNet-18's inference at batch 1, two alternating profiles).
pub fn max_pool_forward_kernel(kernels: &Kernels, shape: MaxPoolShape) -> &Kernel {
    match shape.kernel {
        3 => &kernels.pool.max_forward_3x3,
        _ => &kernels.pool.max_forward,
    }
}

/// `y [N, C, out_h, out_w]` = the maximum of each window of `x [N, C, in_h, in_w]`.
pub fn max_pool_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: MaxPoolShape,
    x: &Tensor,
    y: &Tensor,
) -> Dispatch {
    assert_len("max_pool_forward x", x, shape.input_len());
    assert_len("max_pool_forward y", y, shape.output_len());
    max_pool_forward_kernel(kernels, shape).bind(
        device,
        &shape.params(),
        &[x, y],
        grid_1d(shape.output_len(), ELEMENTWISE_WORKGROUP),
    )
}

/// Largest stride [`max_pool_backward`] supports (`MAX_STRIDE` in pool.wgsl): a
/// cell's gradients are held in `stride^2` registers.
pub const MAX_POOL_BACKWARD_STRIDE: usize = 4;

/// `dx` from `dy`: each output's gradient goes to the first maximum of its window
/// (row-major), as PyTorch. Gather form with argmax recomputation from `x`.
pub fn max_pool_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: MaxPoolShape,
    x: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
) -> Dispatch {
    assert_len("max_pool_backward x", x, shape.input_len());
    assert_len("max_pool_backward dy", dy, shape.output_len());
    assert_len("max_pool_backward dx", dx, shape.input_len());
    assert!(
        shape.stride <= MAX_POOL_BACKWARD_STRIDE,
        "max_pool_backward: stride above {MAX_POOL_BACKWARD_STRIDE} is not supported: {shape:?}"
    );
    let cells = shape.planes() * shape.in_h.div_ceil(shape.stride) * shape.in_w.div_ceil(shape.stride);
    kernels.pool.max_backward.bind(
        device,
        &shape.params(),
        &[x, dy, dx],
        grid_1d(cells, ELEMENTWISE_WORKGROUP),
    )
}

/// Global average pooling: `[N, C, H, W]` to `[N, C]` with `spatial = H * W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalAvgPoolShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl GlobalAvgPoolShape {
    fn planes(&self) -> usize {
        self.batch * self.channels
    }

    fn params(&self) -> AvgPoolParams {
        assert!(self.spatial > 0, "global average pool over an empty map: {self:?}");
        AvgPoolParams {
            planes: self.planes() as u32,
            spatial: self.spatial as u32,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AvgPoolParams {
    planes: u32,
    spatial: u32,
}

/// The kernel that [`global_avg_pool_forward`] runs.
pub fn global_avg_pool_forward_kernel(kernels: &Kernels) -> &Kernel {
    &kernels.pool.avg_forward
}

/// `y [N, C]` = the mean of each plane of `x [N, C, H, W]`.
pub fn global_avg_pool_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: GlobalAvgPoolShape,
    x: &Tensor,
    y: &Tensor,
) -> Dispatch {
    assert_len("global_avg_pool_forward x", x, shape.planes() * shape.spatial);
    assert_len("global_avg_pool_forward y", y, shape.planes());
    global_avg_pool_forward_kernel(kernels).bind(
        device,
        &shape.params(),
        &[x, y],
        grid_1d(shape.planes(), ELEMENTWISE_WORKGROUP),
    )
}

/// `dx [N, C, H, W] = dy [N, C] / (H * W)`, broadcast over each plane.
pub fn global_avg_pool_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: GlobalAvgPoolShape,
    dy: &Tensor,
    dx: &Tensor,
) -> Dispatch {
    assert_len("global_avg_pool_backward dy", dy, shape.planes());
    assert_len("global_avg_pool_backward dx", dx, shape.planes() * shape.spatial);
    kernels.pool.avg_backward.bind(
        device,
        &shape.params(),
        &[dy, dx],
        grid_1d(shape.planes() * shape.spatial, ELEMENTWISE_WORKGROUP),
    )
}

/// Plain-Rust reference.
pub mod cpu {
    use super::{GlobalAvgPoolShape, MaxPoolShape};

    /// For each output of each plane, in NCHW order: (plane, flat in-plane index
    /// of the window's first maximum). Padding positions are skipped, which is
    /// what -inf padding amounts to.
    fn window_argmaxes(shape: MaxPoolShape, x: &[f64]) -> Vec<(usize, usize)> {
        let (in_h, in_w) = (shape.in_h as isize, shape.in_w as isize);
        assert_eq!(x.len(), shape.input_len(), "max pool reference: x length");
        let mut argmaxes = Vec::with_capacity(shape.output_len());
        for plane in 0..shape.planes() {
            let x = &x[plane * shape.in_h * shape.in_w..][..shape.in_h * shape.in_w];
            for oh in 0..shape.out_h() {
                for ow in 0..shape.out_w() {
                    let mut best: Option<usize> = None;
                    for kh in 0..shape.kernel {
                        for kw in 0..shape.kernel {
                            let ih = (oh * shape.stride + kh) as isize - shape.pad as isize;
                            let iw = (ow * shape.stride + kw) as isize - shape.pad as isize;
                            if !(0..in_h).contains(&ih) || !(0..in_w).contains(&iw) {
                                continue;
                            }
                            let at = (ih * in_w + iw) as usize;
                            if best.is_none_or(|b| x[at] > x[b]) {
                                best = Some(at);
                            }
                        }
                    }
                    argmaxes.push((plane, best.expect("every window holds an input")));
                }
            }
        }
        argmaxes
    }

    pub fn max_pool_forward(shape: MaxPoolShape, x: &[f64]) -> Vec<f64> {
        let plane_len = shape.in_h * shape.in_w;
        window_argmaxes(shape, x)
            .into_iter()
            .map(|(plane, at)| x[plane * plane_len + at])
            .collect()
    }

    /// Scatters each `dy` to its window's first maximum.
    pub fn max_pool_backward(shape: MaxPoolShape, x: &[f64], dy: &[f64]) -> Vec<f64> {
        assert_eq!(dy.len(), shape.output_len(), "max pool reference: dy length");
        let plane_len = shape.in_h * shape.in_w;
        let mut dx = vec![0.0; x.len()];
        for ((plane, at), g) in window_argmaxes(shape, x).into_iter().zip(dy) {
            dx[plane * plane_len + at] += g;
        }
        dx
    }

    pub fn global_avg_pool_forward(shape: GlobalAvgPoolShape, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), shape.planes() * shape.spatial, "avg pool reference: x length");
        x.chunks(shape.spatial)
            .map(|plane| plane.iter().sum::<f64>() / shape.spatial as f64)
            .collect()
    }

    pub fn global_avg_pool_backward(shape: GlobalAvgPoolShape, dy: &[f64]) -> Vec<f64> {
        assert_eq!(dy.len(), shape.planes(), "avg pool reference: dy length");
        dy.iter()
            .flat_map(|&g| std::iter::repeat_n(g / shape.spatial as f64, shape.spatial))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    fn stem_pool(batch: usize, channels: usize, in_h: usize, in_w: usize) -> MaxPoolShape {
        MaxPoolShape {
            batch,
            channels,
            in_h,
            in_w,
            kernel: 3,
            stride: 2,
            pad: 1,
        }
    }

    #[test]
    fn max_pool_output_size_follows_pytorch_floor_formula() {
        // torch.nn.MaxPool2d(3, 2, 1) maps 112 -> 56, 7 -> 4, 8 -> 4; MaxPool2d(2, 2) 7 -> 3.
        assert_eq!(stem_pool(1, 1, 112, 112).out_h(), 56);
        assert_eq!(stem_pool(1, 1, 7, 8).out_h(), 4);
        assert_eq!(stem_pool(1, 1, 7, 8).out_w(), 4);
        let two_by_two = MaxPoolShape {
            kernel: 2,
            stride: 2,
            pad: 0,
            ..stem_pool(1, 1, 7, 7)
        };
        assert_eq!(two_by_two.out_h(), 3);
    }

    #[test]
    fn max_pool_reference_matches_hand_computed_ties_and_padding() {
        // One 3x3 plane of all -1 under a 2x2/s1/p1 pool: each window's first
        // (top-left) input wins, never the padding, and the corners only see one input.
        let shape = MaxPoolShape {
            batch: 1,
            channels: 1,
            in_h: 2,
            in_w: 2,
            kernel: 2,
            stride: 1,
            pad: 1,
        };
        let x = [-1.0; 4];
        assert_eq!(cpu::max_pool_forward(shape, &x), vec![-1.0; 9]);
        // Outputs (row-major 3x3) and the input each one picks:
        // (0,0)->0 (0,1)->0 (0,2)->1 (1,0)->0 (1,1)->0 (1,2)->1 (2,0)->2 (2,1)->2 (2,2)->3.
        let dy: Vec<f64> = (0..9).map(|i| (1u32 << i) as f64).collect();
        let want = [1.0 + 2.0 + 8.0 + 16.0, 4.0 + 32.0, 64.0 + 128.0, 256.0];
        assert_eq!(cpu::max_pool_backward(shape, &x, &dy), want);
    }

    /// Inputs drawn from three negative levels: many ties inside each window, and a
    /// wrongly treated padding (0 instead of -inf) would win every border window.
    fn tied_negative_input(rng: &mut Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| -1.0 - rng.below(3) as f64).collect()
    }

    #[test]
    fn max_pool_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(11);
        let shapes = [
            stem_pool(1, 3, 7, 7),
            stem_pool(3, 5, 5, 5),
            stem_pool(2, 3, 8, 8),
            stem_pool(2, 64, 56, 56),
            MaxPoolShape {
                kernel: 2,
                stride: 2,
                pad: 0,
                ..stem_pool(3, 5, 7, 7)
            },
            MaxPoolShape {
                kernel: 3,
                stride: 1,
                pad: 1,
                ..stem_pool(1, 3, 6, 5)
            },
            // Cells of 3x3 and 4x4 (the largest supported stride), cut at the edges.
            MaxPoolShape {
                kernel: 4,
                stride: 3,
                pad: 2,
                ..stem_pool(2, 3, 10, 8)
            },
            MaxPoolShape {
                kernel: 5,
                stride: MAX_POOL_BACKWARD_STRIDE,
                pad: 2,
                ..stem_pool(1, 2, 9, 11)
            },
        ];
        let mut forwards = std::collections::BTreeSet::new();
        for shape in shapes {
            let input_len = shape.input_len();
            let inputs = [
                ("random", rng.vec(input_len, -1.0, 1.0)),
                ("tied", tied_negative_input(&mut rng, input_len)),
                ("constant", vec![-0.5; input_len]),
            ];
            for (kind, x) in inputs {
                let dy = rng.vec(shape.output_len(), -1.0, 1.0);
                let y_ref = cpu::max_pool_forward(shape, &x);
                let dx_ref = cpu::max_pool_backward(shape, &x, &dy);
                let xt = Tensor::from_f64(device, &[shape.input_len()], &x).unwrap();
                let yt = Tensor::zeros(device, &[shape.output_len()]).unwrap();
                let dyt = Tensor::from_f64(device, &[shape.output_len()], &dy).unwrap();
                let dxt = Tensor::zeros(device, &[shape.input_len()]).unwrap();
                let forward = max_pool_forward(device, &ctx.kernels, shape, &xt, &yt);
                forwards.insert(forward.entry_point());
                let backward = max_pool_backward(device, &ctx.kernels, shape, &xt, &dyt, &dxt);
                ctx.run(&[&forward, &backward]);
                let what = format!("{shape:?} {kind}");
                // A maximum is exact; dx sums at most four f32 dy values in
                // [-1, 1] (3x3/s2 windows overlap twice per axis): rounding < 1e-6.
                assert_close(
                    &format!("max pool y {what}"),
                    &yt.read_blocking(device, queue).unwrap(),
                    &y_ref,
                    0.0,
                    0.0,
                );
                assert_close(
                    &format!("max pool dx {what}"),
                    &dxt.read_blocking(device, queue).unwrap(),
                    &dx_ref,
                    1e-6,
                    0.0,
                );
            }
        }
        // The 3x3 windows (clipped at every edge above) and the others.
        assert_eq!(
            forwards.into_iter().collect::<Vec<_>>(),
            ["max_pool_forward", "max_pool_forward_3x3"]
        );
    }

    #[test]
    fn max_pool_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(12);
        for shape in [stem_pool(2, 3, 7, 7), stem_pool(1, 2, 8, 8)] {
            let len = shape.input_len();
            // Distinct values 0.01 apart (a shuffled ramp): no window has a tie
            // that a finite-difference step of 1e-5 could flip.
            let mut x: Vec<f64> = (0..len).map(|i| i as f64 * 0.01).collect();
            for i in (1..len).rev() {
                x.swap(i, rng.below(i + 1));
            }
            let r = rng.vec(shape.output_len(), -1.0, 1.0);
            let loss = |x: &[f64]| dot(&cpu::max_pool_forward(shape, x), &r);
            assert_gradient("max pool dx", loss, &x, &cpu::max_pool_backward(shape, &x, &r));
        }
    }

    #[test]
    fn global_avg_pool_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(13);
        let shapes = [(1, 3, 49), (3, 5, 25), (128, 64, 64), (2, 512, 49), (1, 1, 1)];
        for (batch, channels, spatial) in shapes {
            let shape = GlobalAvgPoolShape {
                batch,
                channels,
                spatial,
            };
            let x = rng.vec(batch * channels * spatial, -1.0, 1.0);
            let dy = rng.vec(batch * channels, -1.0, 1.0);
            let y_ref = cpu::global_avg_pool_forward(shape, &x);
            let dx_ref = cpu::global_avg_pool_backward(shape, &dy);
            let xt = Tensor::from_f64(device, &[batch, channels, spatial], &x).unwrap();
            let yt = Tensor::zeros(device, &[batch, channels]).unwrap();
            let dyt = Tensor::from_f64(device, &[batch, channels], &dy).unwrap();
            let dxt = Tensor::zeros(device, &[batch, channels, spatial]).unwrap();
            let forward = global_avg_pool_forward(device, &ctx.kernels, shape, &xt, &yt);
            let backward = global_avg_pool_backward(device, &ctx.kernels, shape, &dyt, &dxt);
            ctx.run(&[&forward, &backward]);
            // y: f32 sum of at most 64 values in [-1, 1], error well under 1e-6
            // after the division; dx: one f32 division, relative error ~1e-7.
            assert_close(
                &format!("avg pool y {shape:?}"),
                &yt.read_blocking(device, queue).unwrap(),
                &y_ref,
                1e-6,
                1e-6,
            );
            assert_close(
                &format!("avg pool dx {shape:?}"),
                &dxt.read_blocking(device, queue).unwrap(),
                &dx_ref,
                0.0,
                1e-6,
            );
        }
    }

    #[test]
    fn global_avg_pool_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(14);
        let shape = GlobalAvgPoolShape {
            batch: 2,
            channels: 3,
            spatial: 25,
        };
        let x = rng.vec(2 * 3 * 25, -1.0, 1.0);
        let r = rng.vec(2 * 3, -1.0, 1.0);
        let loss = |x: &[f64]| dot(&cpu::global_avg_pool_forward(shape, x), &r);
        assert_gradient("avg pool dx", loss, &x, &cpu::global_avg_pool_backward(shape, &r));
    }
}
