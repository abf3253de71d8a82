//! ReLU: `y = max(x, 0)`; backward `dx = dy * [y > 0]`.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct ReluKernels {
    forward: Kernel,
    backward: Kernel,
}

impl ReluKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("relu", include_str!("../../../shaders/relu.wgsl"));
        Self {
            forward: Kernel::new(device, &module, "relu_forward", 0),
            backward: Kernel::new(device, &module, "relu_backward", 10),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
}

/// `y = relu(x)`; `x` and `y` have the same number of elements.
pub fn relu_forward(device: &wgpu::Device, kernels: &Kernels, x: &Tensor, y: &Tensor) -> Dispatch {
    assert_eq!(x.len(), y.len(), "relu_forward: x {:?} vs y {:?}", x.shape, y.shape);
    let params = Params { len: x.len() as u32 };
    kernels
        .relu
        .forward
        .bind(device, &params, &[x, y], grid_1d(x.len(), ELEMENTWISE_WORKGROUP))
}

/// `dx = dy * [y > 0]`, where `y` is the forward output.
pub fn relu_backward(device: &wgpu::Device, kernels: &Kernels, y: &Tensor, dy: &Tensor, dx: &Tensor) -> Dispatch {
    assert!(
        y.len() == dy.len() && dy.len() == dx.len(),
        "relu_backward: shapes differ"
    );
    let params = Params { len: y.len() as u32 };
    kernels
        .relu
        .backward
        .bind(device, &params, &[y, dy, dx], grid_1d(y.len(), ELEMENTWISE_WORKGROUP))
}

/// Plain-Rust reference.
pub mod cpu {
    pub fn relu_forward(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect()
    }

    pub fn relu_backward(y: &[f64], dy: &[f64]) -> Vec<f64> {
        y.iter().zip(dy).map(|(&y, &g)| if y > 0.0 { g } else { 0.0 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    #[test]
    fn relu_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(1);
        for len in [1usize, 7, 256, 1000, 3 * 5 * 7 * 7] {
            let x = rng.vec(len, -1.0, 1.0);
            let dy = rng.vec(len, -1.0, 1.0);
            let y_ref = cpu::relu_forward(&x);
            let dx_ref = cpu::relu_backward(&y_ref, &dy);
            let xt = Tensor::from_f64(device, &[len], &x).unwrap();
            let yt = Tensor::zeros(device, &[len]).unwrap();
            let dyt = Tensor::from_f64(device, &[len], &dy).unwrap();
            let dxt = Tensor::zeros(device, &[len]).unwrap();
            let forward = relu_forward(device, &ctx.kernels, &xt, &yt);
            let backward = relu_backward(device, &ctx.kernels, &yt, &dyt, &dxt);
            ctx.run(&[&forward, &backward]);
            assert_close("relu y", &yt.read_blocking(device, queue).unwrap(), &y_ref, 0.0, 0.0);
            assert_close("relu dx", &dxt.read_blocking(device, queue).unwrap(), &dx_ref, 0.0, 0.0);
        }
    }

    #[test]
    fn relu_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(2);
        // Keep inputs away from the kink at 0, where the derivative is undefined.
        let x: Vec<f64> = rng
            .vec(50, 0.1, 1.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let r = rng.vec(50, -1.0, 1.0);
        let loss = |x: &[f64]| dot(&cpu::relu_forward(x), &r);
        let analytic = cpu::relu_backward(&cpu::relu_forward(&x), &r);
        assert_gradient("relu dx", loss, &x, &analytic);
    }
}
