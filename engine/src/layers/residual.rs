//! Residual connections: the sum `y = a + b` of a block's output and its shortcut
//! (also the sum of the gradients reaching a fork), and the parameter-free
//! option-A shortcut of the CIFAR nets, which subsamples rows and columns by the
//! stride and zero-pads channels (`x[:, :, ::stride, ::stride]`, then
//! `(out - in) / 2` zero channels before and the rest after, as in the published
//! reference weights).

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct ResidualKernels {
    add: Kernel,
    shortcut_a_forward: Kernel,
    shortcut_a_backward: Kernel,
}

impl ResidualKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("residual", include_str!("../../../shaders/residual.wgsl"));
        Self {
            add: Kernel::new(device, &module, "add_forward", 0),
            shortcut_a_forward: Kernel::new(device, &module, "shortcut_a_forward", 10),
            shortcut_a_backward: Kernel::new(device, &module, "shortcut_a_backward", 20),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AddParams {
    len: u32,
}

/// `y = a + b` element-wise; three distinct tensors of one length.
pub fn add_forward(device: &wgpu::Device, kernels: &Kernels, a: &Tensor, b: &Tensor, y: &Tensor) -> Dispatch {
    assert!(
        a.len() == b.len() && b.len() == y.len(),
        "add_forward: a {:?}, b {:?}, y {:?}",
        a.shape,
        b.shape,
        y.shape
    );
    let params = AddParams { len: a.len() as u32 };
    kernels
        .residual
        .add
        .bind(device, &params, &[a, b, y], grid_1d(a.len(), ELEMENTWISE_WORKGROUP))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortcutAShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub stride: usize,
}

impl ShortcutAShape {
    /// `ceil(in_h / stride)`: rows 0, stride, 2 * stride, ... of the input.
    pub fn out_h(&self) -> usize {
        self.in_h.div_ceil(self.stride)
    }

    pub fn out_w(&self) -> usize {
        self.in_w.div_ceil(self.stride)
    }

    /// Zero channels in front of the identity channels.
    pub fn pad_before(&self) -> usize {
        (self.out_channels - self.in_channels) / 2
    }

    pub fn in_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }

    pub fn out_len(&self) -> usize {
        self.batch * self.out_channels * self.out_h() * self.out_w()
    }

    #[track_caller]
    fn check(&self) {
        assert!(self.stride >= 1, "option-A shortcut: stride 0 in {self:?}");
        assert!(
            self.out_channels >= self.in_channels,
            "option-A shortcut pads channels, it cannot drop them: {self:?}"
        );
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ShortcutParams {
    in_channels: u32,
    out_channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad_before: u32,
    rows: u32,
}

/// Binds one of the shortcut passes, which write one row per invocation.
fn bind_shortcut(
    device: &wgpu::Device,
    kernel: &Kernel,
    shape: ShortcutAShape,
    rows: usize,
    tensors: [&Tensor; 2],
) -> Dispatch {
    let params = ShortcutParams {
        in_channels: shape.in_channels as u32,
        out_channels: shape.out_channels as u32,
        in_h: shape.in_h as u32,
        in_w: shape.in_w as u32,
        out_h: shape.out_h() as u32,
        out_w: shape.out_w() as u32,
        stride: shape.stride as u32,
        pad_before: shape.pad_before() as u32,
        rows: rows as u32,
    };
    kernel.bind(device, &params, &tensors, grid_1d(rows, ELEMENTWISE_WORKGROUP))
}

/// The kernel that [`shortcut_a_forward`] runs.
pub fn shortcut_a_forward_kernel(kernels: &Kernels) -> &Kernel {
    &kernels.residual.shortcut_a_forward
}

/// Option-A shortcut: `y` (`[N, out_channels, out_h, out_w]`) is `x` subsampled by
/// the stride, in channels `pad_before..pad_before + in_channels`, zero elsewhere.
pub fn shortcut_a_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: ShortcutAShape,
    x: &Tensor,
    y: &Tensor,
) -> Dispatch {
    shape.check();
    assert_eq!(
        x.len(),
        shape.in_len(),
        "shortcut_a_forward: x {:?} vs {shape:?}",
        x.shape
    );
    assert_eq!(
        y.len(),
        shape.out_len(),
        "shortcut_a_forward: y {:?} vs {shape:?}",
        y.shape
    );
    let rows = shape.batch * shape.out_channels * shape.out_h();
    bind_shortcut(device, shortcut_a_forward_kernel(kernels), shape, rows, [x, y])
}

/// Backward of [`shortcut_a_forward`]: `dx` gets `dy` of the identity channels at
/// the subsampled positions and zero elsewhere (overwritten).
pub fn shortcut_a_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: ShortcutAShape,
    dy: &Tensor,
    dx: &Tensor,
) -> Dispatch {
    shape.check();
    assert_eq!(
        dy.len(),
        shape.out_len(),
        "shortcut_a_backward: dy {:?} vs {shape:?}",
        dy.shape
    );
    assert_eq!(
        dx.len(),
        shape.in_len(),
        "shortcut_a_backward: dx {:?} vs {shape:?}",
        dx.shape
    );
    let rows = shape.batch * shape.in_channels * shape.in_h;
    bind_shortcut(device, &kernels.residual.shortcut_a_backward, shape, rows, [dy, dx])
}

/// Plain-Rust reference.
pub mod cpu {
    use super::ShortcutAShape;

    pub fn add_forward(a: &[f64], b: &[f64]) -> Vec<f64> {
        assert_eq!(a.len(), b.len(), "add_forward: lengths differ");
        a.iter().zip(b).map(|(a, b)| a + b).collect()
    }

    /// `f(x index, y index)` for every input value the shortcut passes on.
    fn for_each_identity(shape: ShortcutAShape, mut f: impl FnMut(usize, usize)) {
        let (out_h, out_w) = (shape.out_h(), shape.out_w());
        for n in 0..shape.batch {
            for ci in 0..shape.in_channels {
                let co = ci + shape.pad_before();
                for oh in 0..out_h {
                    for ow in 0..out_w {
                        let x = ((n * shape.in_channels + ci) * shape.in_h + oh * shape.stride) * shape.in_w
                            + ow * shape.stride;
                        let y = ((n * shape.out_channels + co) * out_h + oh) * out_w + ow;
                        f(x, y);
                    }
                }
            }
        }
    }

    pub fn shortcut_a_forward(shape: ShortcutAShape, x: &[f64]) -> Vec<f64> {
        shape.check();
        assert_eq!(x.len(), shape.in_len(), "shortcut_a_forward: x length vs {shape:?}");
        let mut y = vec![0.0; shape.out_len()];
        for_each_identity(shape, |xi, yi| y[yi] = x[xi]);
        y
    }

    pub fn shortcut_a_backward(shape: ShortcutAShape, dy: &[f64]) -> Vec<f64> {
        shape.check();
        assert_eq!(dy.len(), shape.out_len(), "shortcut_a_backward: dy length vs {shape:?}");
        let mut dx = vec![0.0; shape.in_len()];
        for_each_identity(shape, |xi, yi| dx[xi] += dy[yi]);
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    const SHAPES: [ShortcutAShape; 5] = [
        // ResNet-20's two transitions.
        ShortcutAShape {
            batch: 2,
            in_channels: 16,
            out_channels: 32,
            in_h: 32,
            in_w: 32,
            stride: 2,
        },
        ShortcutAShape {
            batch: 3,
            in_channels: 32,
            out_channels: 64,
            in_h: 16,
            in_w: 16,
            stride: 2,
        },
        // Odd maps (ceil), odd channel padding (1 before, 2 after), batch 1.
        ShortcutAShape {
            batch: 1,
            in_channels: 3,
            out_channels: 6,
            in_h: 7,
            in_w: 5,
            stride: 2,
        },
        ShortcutAShape {
            batch: 3,
            in_channels: 5,
            out_channels: 5,
            in_h: 5,
            in_w: 7,
            stride: 3,
        },
        // Identity.
        ShortcutAShape {
            batch: 2,
            in_channels: 4,
            out_channels: 4,
            in_h: 3,
            in_w: 3,
            stride: 1,
        },
    ];

    #[test]
    fn add_gpu_matches_reference() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(1);
        for len in [1usize, 7, 256, 257, 3 * 5 * 7 * 7] {
            let (a, b) = (rng.vec(len, -1.0, 1.0), rng.vec(len, -1.0, 1.0));
            let at = Tensor::from_f64(device, &[len], &a).unwrap();
            let bt = Tensor::from_f64(device, &[len], &b).unwrap();
            let yt = Tensor::zeros(device, &[len]).unwrap();
            ctx.run(&[&add_forward(device, &ctx.kernels, &at, &bt, &yt)]);
            // One f32 rounding of the exact sum of two f32 values.
            assert_close(
                "add y",
                &yt.read_blocking(device, queue).unwrap(),
                &cpu::add_forward(&a, &b),
                0.0,
                1e-7,
            );
        }
    }

    #[test]
    fn shortcut_a_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(2);
        for shape in SHAPES {
            let x = rng.vec(shape.in_len(), -1.0, 1.0);
            let dy = rng.vec(shape.out_len(), -1.0, 1.0);
            let xt = Tensor::from_f64(device, &[shape.in_len()], &x).unwrap();
            let dyt = Tensor::from_f64(device, &[shape.out_len()], &dy).unwrap();
            // Garbage in the outputs proves that every element is overwritten.
            let yt = Tensor::from_f64(device, &[shape.out_len()], &vec![9.0; shape.out_len()]).unwrap();
            let dxt = Tensor::from_f64(device, &[shape.in_len()], &vec![9.0; shape.in_len()]).unwrap();
            let forward = shortcut_a_forward(device, &ctx.kernels, shape, &xt, &yt);
            let backward = shortcut_a_backward(device, &ctx.kernels, shape, &dyt, &dxt);
            ctx.run(&[&forward, &backward]);
            // Pure copies: exact.
            let what = format!("{shape:?}");
            assert_close(
                &format!("shortcut y {what}"),
                &yt.read_blocking(device, queue).unwrap(),
                &cpu::shortcut_a_forward(shape, &x),
                0.0,
                0.0,
            );
            assert_close(
                &format!("shortcut dx {what}"),
                &dxt.read_blocking(device, queue).unwrap(),
                &cpu::shortcut_a_backward(shape, &dy),
                0.0,
                0.0,
            );
        }
    }

    #[test]
    fn shortcut_a_reference_places_identity_in_middle_channels_like_reference_weights() {
        // 16 -> 32 at stride 2: channels 8..24 hold x[:, :, ::2, ::2], the rest are 0.
        let shape = ShortcutAShape {
            batch: 1,
            in_channels: 16,
            out_channels: 32,
            in_h: 4,
            in_w: 4,
            stride: 2,
        };
        let x: Vec<f64> = (0..shape.in_len()).map(|i| i as f64 + 1.0).collect();
        let y = cpu::shortcut_a_forward(shape, &x);
        for co in 0..32 {
            for oh in 0..2 {
                for ow in 0..2 {
                    let got = y[(co * 2 + oh) * 2 + ow];
                    let want = if (8..24).contains(&co) {
                        x[((co - 8) * 4 + 2 * oh) * 4 + 2 * ow]
                    } else {
                        0.0
                    };
                    assert_eq!(got, want, "channel {co} row {oh} col {ow}");
                }
            }
        }
    }

    #[test]
    fn residual_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(3);
        for shape in SHAPES.into_iter().skip(2) {
            let x = rng.vec(shape.in_len(), -1.0, 1.0);
            let r = rng.vec(shape.out_len(), -1.0, 1.0);
            let loss = |x: &[f64]| dot(&cpu::shortcut_a_forward(shape, x), &r);
            assert_gradient("shortcut dx", loss, &x, &cpu::shortcut_a_backward(shape, &r));
        }
        // The gradient of a + b reaches both inputs unchanged, which is why the
        // backward of a residual sum needs no kernel of its own.
        let (a, b, r) = (rng.vec(20, -1.0, 1.0), rng.vec(20, -1.0, 1.0), rng.vec(20, -1.0, 1.0));
        assert_gradient("add da", |a| dot(&cpu::add_forward(a, &b), &r), &a, &r);
        assert_gradient("add db", |b| dot(&cpu::add_forward(&a, b), &r), &b, &r);
    }
}
