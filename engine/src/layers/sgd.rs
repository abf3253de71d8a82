//! SGD with momentum and weight decay, PyTorch semantics (dampening 0, no
//! Nesterov), in place over one flat parameter tensor:
//! `g = grad + weight_decay * p; v = momentum * v + g; p -= lr * v`.
//! PyTorch's first step sets `v = g`; a velocity initialised to zero gives the same.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct SgdKernels {
    step: Kernel,
}

impl SgdKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("sgd", include_str!("../../../shaders/sgd.wgsl"));
        Self {
            step: Kernel::new(device, &module, "sgd_step", 0),
        }
    }
}

/// The uniform of [`sgd_step`]; change the learning rate between steps with
/// `dispatch.update_params(queue, &SgdParams { .. })`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Number of parameters: the length of all three tensors.
    pub len: u32,
}

/// One in-place step over `weights` and `velocity` from `grads`.
pub fn sgd_step(
    device: &wgpu::Device,
    kernels: &Kernels,
    params: &SgdParams,
    weights: &Tensor,
    grads: &Tensor,
    velocity: &Tensor,
) -> Dispatch {
    let len = params.len as usize;
    assert!(
        weights.len() == len && grads.len() == len && velocity.len() == len,
        "sgd_step: params.len {len} but weights {:?}, grads {:?}, velocity {:?}",
        weights.shape,
        grads.shape,
        velocity.shape
    );
    kernels.sgd.step.bind(
        device,
        params,
        &[weights, grads, velocity],
        grid_1d(len, ELEMENTWISE_WORKGROUP),
    )
}

/// Plain-Rust reference.
pub mod cpu {
    use super::SgdParams;

    /// One step in f64 (the hyper-parameters widened from f32).
    pub fn sgd_step(p: &SgdParams, weights: &mut [f64], grads: &[f64], velocity: &mut [f64]) {
        let len = p.len as usize;
        assert!(
            weights.len() == len && grads.len() == len && velocity.len() == len,
            "sgd reference: lengths differ from params.len {len}"
        );
        let (lr, momentum, weight_decay) = (p.lr as f64, p.momentum as f64, p.weight_decay as f64);
        for ((w, &g), v) in weights.iter_mut().zip(grads).zip(velocity.iter_mut()) {
            *v = momentum * *v + g + weight_decay * *w;
            *w -= lr * *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, context};

    #[test]
    fn sgd_reference_matches_hand_computed_pytorch_steps() {
        let params = SgdParams {
            lr: 0.5,
            momentum: 0.5,
            weight_decay: 0.25,
            len: 1,
        };
        let (mut w, mut v) = ([1.0], [0.0]);
        // Step 1: g = 0.5 + 0.25 * 1 = 0.75, v = 0.75, p = 1 - 0.375 = 0.625.
        cpu::sgd_step(&params, &mut w, &[0.5], &mut v);
        assert_eq!((w, v), ([0.625], [0.75]));
        // Step 2: g = 0.5 + 0.25 * 0.625 = 0.65625, v = 0.375 + 0.65625 = 1.03125,
        // p = 0.625 - 0.515625 = 0.109375 (all exact in binary).
        cpu::sgd_step(&params, &mut w, &[0.5], &mut v);
        assert_eq!((w, v), ([0.109375], [1.03125]));
    }

    #[test]
    fn sgd_gpu_matches_reference_over_steps_with_changing_learning_rate() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(41);
        for len in [1usize, 7, 255, 257, 1001] {
            let mut params = SgdParams {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.05,
                len: len as u32,
            };
            let mut w = rng.vec(len, -1.0, 1.0);
            let mut v = vec![0.0; len];
            let wt = Tensor::from_f64(device, &[len], &w).unwrap();
            let gt = Tensor::zeros(device, &[len]).unwrap();
            let vt = Tensor::zeros(device, &[len]).unwrap();
            let step = sgd_step(device, &ctx.kernels, &params, &wt, &gt, &vt);
            for (i, lr) in [0.1f32, 0.1, 0.01, 0.3].into_iter().enumerate() {
                params.lr = lr;
                step.update_params(queue, &params);
                let g = rng.vec(len, -1.0, 1.0);
                gt.write(queue, &g.iter().map(|&x| x as f32).collect::<Vec<_>>())
                    .unwrap();
                ctx.run(&[&step]);
                cpu::sgd_step(&params, &mut w, &g, &mut v);
                // A few f32 multiply-adds per step on O(1) values: error ~1e-7 per
                // step; a skipped term (decay, momentum) errs by > 1e-3.
                let what = format!("len {len} step {i}");
                assert_close(
                    &format!("sgd weights {what}"),
                    &wt.read_blocking(device, queue).unwrap(),
                    &w,
                    1e-6,
                    1e-6,
                );
                assert_close(
                    &format!("sgd velocity {what}"),
                    &vt.read_blocking(device, queue).unwrap(),
                    &v,
                    1e-6,
                    1e-6,
                );
            }
        }
    }
}
