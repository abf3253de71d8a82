//! Fully connected layer with bias (the classifier), PyTorch layout:
//! `y [N, out] = x [N, in] · w [out, in]^T + b [out]`.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct LinearKernels {
    forward: Kernel,
    /// `forward` for inputs of a multiple of 4 features, loading vec4s.
    forward_vec4: Kernel,
    backward_data: Kernel,
    backward_weight: Kernel,
    backward_bias: Kernel,
}

impl LinearKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("linear", include_str!("../../../shaders/linear.wgsl"));
        Self {
            forward: Kernel::new(device, &module, "linear_forward", 0),
            forward_vec4: Kernel::new(device, &module, "linear_forward_vec4", 0),
            backward_data: Kernel::new(device, &module, "linear_backward_data", 10),
            backward_weight: Kernel::new(device, &module, "linear_backward_weight", 20),
            backward_bias: Kernel::new(device, &module, "linear_backward_bias", 30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
}

impl LinearShape {
    fn params(&self) -> Params {
        Params {
            batch: self.batch as u32,
            in_features: self.in_features as u32,
            out_features: self.out_features as u32,
        }
    }

    /// Asserts that each `(name, tensor, rows, columns)` holds `rows * columns` elements.
    #[track_caller]
    fn check(&self, what: &str, tensors: &[(&str, &Tensor, usize, usize)]) {
        for &(name, tensor, rows, columns) in tensors {
            assert_eq!(
                tensor.len(),
                rows * columns,
                "{what}: {name} of shape {:?} should be [{rows}, {columns}] for {self:?}",
                tensor.shape
            );
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    in_features: u32,
    out_features: u32,
}

/// The kernel that [`linear_forward`] runs for `shape`: the vec4 twin where
/// the input features are a multiple of 4.
pub fn linear_forward_kernel(kernels: &Kernels, shape: LinearShape) -> &Kernel {
    if shape.in_features.is_multiple_of(4) {
        &kernels.linear.forward_vec4
    } else {
        &kernels.linear.forward
    }
}

/// `y = x w^T + b`.
pub fn linear_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LinearShape,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
) -> Dispatch {
    let LinearShape {
        batch,
        in_features,
        out_features,
    } = shape;
    shape.check(
        "linear_forward",
        &[
            ("x", x, batch, in_features),
            ("w", w, out_features, in_features),
            ("b", b, out_features, 1),
            ("y", y, batch, out_features),
        ],
    );
    linear_forward_kernel(kernels, shape).bind(
        device,
        &shape.params(),
        &[x, w, b, y],
        grid_1d(batch * out_features, ELEMENTWISE_WORKGROUP),
    )
}

/// `dx = dy w`.
pub fn linear_backward_data(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LinearShape,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
) -> Dispatch {
    let LinearShape {
        batch,
        in_features,
        out_features,
    } = shape;
    shape.check(
        "linear_backward_data",
        &[
            ("dy", dy, batch, out_features),
            ("w", w, out_features, in_features),
            ("dx", dx, batch, in_features),
        ],
    );
    kernels.linear.backward_data.bind(
        device,
        &shape.params(),
        &[dy, w, dx],
        grid_1d(batch * in_features, ELEMENTWISE_WORKGROUP),
    )
}

/// `dw = dy^T x` and `db = sum over the batch of dy`: two dispatches.
pub fn linear_backward_weight(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LinearShape,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: &Tensor,
) -> Vec<Dispatch> {
    let LinearShape {
        batch,
        in_features,
        out_features,
    } = shape;
    shape.check(
        "linear_backward_weight",
        &[
            ("x", x, batch, in_features),
            ("dy", dy, batch, out_features),
            ("dw", dw, out_features, in_features),
            ("db", db, out_features, 1),
        ],
    );
    let params = shape.params();
    vec![
        kernels.linear.backward_weight.bind(
            device,
            &params,
            &[x, dy, dw],
            grid_1d(out_features * in_features, ELEMENTWISE_WORKGROUP),
        ),
        kernels
            .linear
            .backward_bias
            .bind(device, &params, &[dy, db], grid_1d(out_features, ELEMENTWISE_WORKGROUP)),
    ]
}

/// Plain-Rust reference.
pub mod cpu {
    use super::LinearShape;

    pub fn linear_forward(shape: LinearShape, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
        let LinearShape {
            batch,
            in_features,
            out_features,
        } = shape;
        assert!(
            x.len() == batch * in_features && w.len() == out_features * in_features && b.len() == out_features,
            "linear reference: x, w or b length does not fit {shape:?}"
        );
        let mut y = vec![0.0; batch * out_features];
        for n in 0..batch {
            for o in 0..out_features {
                let mut sum = b[o];
                for i in 0..in_features {
                    sum += x[n * in_features + i] * w[o * in_features + i];
                }
                y[n * out_features + o] = sum;
            }
        }
        y
    }

    pub fn linear_backward_data(shape: LinearShape, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let LinearShape {
            batch,
            in_features,
            out_features,
        } = shape;
        assert!(
            dy.len() == batch * out_features && w.len() == out_features * in_features,
            "linear reference: dy or w length does not fit {shape:?}"
        );
        let mut dx = vec![0.0; batch * in_features];
        for n in 0..batch {
            for o in 0..out_features {
                for i in 0..in_features {
                    dx[n * in_features + i] += dy[n * out_features + o] * w[o * in_features + i];
                }
            }
        }
        dx
    }

    /// Returns `(dw, db)`.
    pub fn linear_backward_weight(shape: LinearShape, x: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let LinearShape {
            batch,
            in_features,
            out_features,
        } = shape;
        assert!(
            x.len() == batch * in_features && dy.len() == batch * out_features,
            "linear reference: x or dy length does not fit {shape:?}"
        );
        let mut dw = vec![0.0; out_features * in_features];
        let mut db = vec![0.0; out_features];
        for n in 0..batch {
            for o in 0..out_features {
                let g = dy[n * out_features + o];
                db[o] += g;
                for i in 0..in_features {
                    dw[o * in_features + i] += g * x[n * in_features + i];
                }
            }
        }
        (dw, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context, dot};

    #[test]
    fn linear_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(21);
        let mut forwards = std::collections::BTreeSet::new();
        for (batch, in_features, out_features) in [(1, 64, 10), (3, 7, 5), (128, 64, 10), (2, 512, 1000), (2, 6, 3)] {
            let shape = LinearShape {
                batch,
                in_features,
                out_features,
            };
            let x = rng.vec(batch * in_features, -1.0, 1.0);
            let w = rng.vec(out_features * in_features, -1.0, 1.0);
            let b = rng.vec(out_features, -1.0, 1.0);
            let dy = rng.vec(batch * out_features, -1.0, 1.0);
            let y_ref = cpu::linear_forward(shape, &x, &w, &b);
            let dx_ref = cpu::linear_backward_data(shape, &dy, &w);
            let (dw_ref, db_ref) = cpu::linear_backward_weight(shape, &x, &dy);

            let tensor =
                |rows: usize, columns: usize, data: &[f64]| Tensor::from_f64(device, &[rows, columns], data).unwrap();
            let (xt, wt, bt, dyt) = (
                tensor(batch, in_features, &x),
                tensor(out_features, in_features, &w),
                tensor(out_features, 1, &b),
                tensor(batch, out_features, &dy),
            );
            let yt = Tensor::zeros(device, &[batch, out_features]).unwrap();
            let dxt = Tensor::zeros(device, &[batch, in_features]).unwrap();
            let dwt = Tensor::zeros(device, &[out_features, in_features]).unwrap();
            let dbt = Tensor::zeros(device, &[out_features]).unwrap();
            let mut dispatches = vec![
                linear_forward(device, &ctx.kernels, shape, &xt, &wt, &bt, &yt),
                linear_backward_data(device, &ctx.kernels, shape, &dyt, &wt, &dxt),
            ];
            dispatches.extend(linear_backward_weight(
                device,
                &ctx.kernels,
                shape,
                &xt,
                &dyt,
                &dwt,
                &dbt,
            ));
            forwards.insert(dispatches[0].entry_point());
            ctx.run(&dispatches.iter().collect::<Vec<_>>());

            // f32 sums of up to 1000 products of values in [-1, 1]: accumulated
            // rounding stays below ~1e-5 absolute; a wrong index errs by O(0.1).
            let read = |t: &Tensor| t.read_blocking(device, queue).unwrap();
            let what = format!("{shape:?}");
            assert_close(&format!("linear y {what}"), &read(&yt), &y_ref, 1e-4, 1e-4);
            assert_close(&format!("linear dx {what}"), &read(&dxt), &dx_ref, 1e-4, 1e-4);
            assert_close(&format!("linear dw {what}"), &read(&dwt), &dw_ref, 1e-4, 1e-4);
            assert_close(&format!("linear db {what}"), &read(&dbt), &db_ref, 1e-4, 1e-4);
        }
        // Inputs of 64 and 512 features take the vec4 twin, of 7 and 6 not.
        assert_eq!(
            forwards,
            ["linear_forward", "linear_forward_vec4"].into(),
            "forward kernels run"
        );
    }

    #[test]
    fn linear_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(22);
        let shape = LinearShape {
            batch: 3,
            in_features: 7,
            out_features: 5,
        };
        let x = rng.vec(3 * 7, -1.0, 1.0);
        let w = rng.vec(5 * 7, -1.0, 1.0);
        let b = rng.vec(5, -1.0, 1.0);
        let r = rng.vec(3 * 5, -1.0, 1.0);
        let (dw, db) = cpu::linear_backward_weight(shape, &x, &r);
        assert_gradient(
            "linear dx",
            |x: &[f64]| dot(&cpu::linear_forward(shape, x, &w, &b), &r),
            &x,
            &cpu::linear_backward_data(shape, &r, &w),
        );
        assert_gradient(
            "linear dw",
            |w: &[f64]| dot(&cpu::linear_forward(shape, &x, w, &b), &r),
            &w,
            &dw,
        );
        assert_gradient(
            "linear db",
            |b: &[f64]| dot(&cpu::linear_forward(shape, &x, &w, b), &r),
            &b,
            &db,
        );
    }
}
