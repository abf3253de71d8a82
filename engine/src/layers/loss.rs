//! Softmax cross-entropy loss (mean over the batch) and top-k accuracy.
//!
//! Labels are u32 tensors; every label must be below `classes` (the GPU does not
//! check it: an out-of-range label reads an unspecified logit).

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, shader_module};
use crate::{Dispatch, Kernels, Tensor};

pub struct LossKernels {
    forward: Kernel,
    backward: Kernel,
    top_k: Kernel,
}

impl LossKernels {
    pub fn new(device: &wgpu::Device) -> Self {
        let module = shader_module("loss", include_str!("../../../shaders/loss.wgsl"));
        Self {
            forward: Kernel::new(device, &module, "softmax_cross_entropy_forward", 0),
            backward: Kernel::new(device, &module, "softmax_cross_entropy_backward", 10),
            top_k: Kernel::new(device, &module, "top_k_correct", 20),
        }
    }
}

/// The batch reductions (loss mean, top-k count) run in one workgroup.
const SINGLE_WORKGROUP: [u32; 3] = [1, 1, 1];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossShape {
    pub batch: usize,
    pub classes: usize,
}

impl LossShape {
    fn params(&self) -> LossParams {
        assert!(
            self.batch > 0 && self.classes > 0,
            "loss over an empty batch or no classes: {self:?}"
        );
        LossParams {
            batch: self.batch as u32,
            classes: self.classes as u32,
        }
    }

    #[track_caller]
    fn check(&self, what: &str, scores: &[(&str, &Tensor)], labels: &Tensor) {
        for &(name, tensor) in scores {
            assert_eq!(
                tensor.len(),
                self.batch * self.classes,
                "{what}: {name} of shape {:?} should be [{}, {}]",
                tensor.shape,
                self.batch,
                self.classes
            );
        }
        assert_eq!(
            labels.len(),
            self.batch,
            "{what}: labels of shape {:?} should be [{}]",
            labels.shape,
            self.batch
        );
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LossParams {
    batch: u32,
    classes: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TopKParams {
    batch: u32,
    classes: u32,
    k: u32,
}

/// Numerically stable log-softmax cross-entropy, averaged over the batch: writes
/// `loss[0]` (a 1-element tensor) and the softmax probabilities `probs [N, classes]`
/// (kept for the backward pass). One dispatch today; a `Vec` so that a
/// multi-pass variant for very large batches needs no API change.
pub fn softmax_cross_entropy_forward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LossShape,
    logits: &Tensor,
    labels: &Tensor,
    probs: &Tensor,
    loss: &Tensor,
) -> Vec<Dispatch> {
    shape.check(
        "softmax_cross_entropy_forward",
        &[("logits", logits), ("probs", probs)],
        labels,
    );
    assert_eq!(loss.len(), 1, "softmax_cross_entropy_forward: loss must hold 1 element");
    vec![kernels.loss.forward.bind(
        device,
        &shape.params(),
        &[logits, labels, probs, loss],
        SINGLE_WORKGROUP,
    )]
}

/// `dlogits = (probs - onehot(labels)) / N`.
pub fn softmax_cross_entropy_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LossShape,
    probs: &Tensor,
    labels: &Tensor,
    dlogits: &Tensor,
) -> Dispatch {
    shape.check(
        "softmax_cross_entropy_backward",
        &[("probs", probs), ("dlogits", dlogits)],
        labels,
    );
    kernels.loss.backward.bind(
        device,
        &shape.params(),
        &[probs, labels, dlogits],
        grid_1d(shape.batch * shape.classes, ELEMENTWISE_WORKGROUP),
    )
}

/// `correct[0]` (u32) = how many rows have their label among the `k` largest
/// logits (ties: a label counts as in the top k if fewer than k logits are
/// strictly greater than it).
pub fn top_k_correct(
    device: &wgpu::Device,
    kernels: &Kernels,
    shape: LossShape,
    logits: &Tensor,
    labels: &Tensor,
    k: usize,
    correct: &Tensor,
) -> Dispatch {
    shape.check("top_k_correct", &[("logits", logits)], labels);
    assert!(k > 0, "top_k_correct: k must be positive");
    assert_eq!(correct.len(), 1, "top_k_correct: correct must hold 1 element");
    let LossParams { batch, classes } = shape.params();
    let params = TopKParams {
        batch,
        classes,
        // Any k >= classes accepts every row; clamping keeps it in u32.
        k: k.min(shape.classes) as u32,
    };
    kernels
        .loss
        .top_k
        .bind(device, &params, &[logits, labels, correct], SINGLE_WORKGROUP)
}

/// Plain-Rust reference.
pub mod cpu {
    use super::LossShape;

    fn rows<'a>(shape: LossShape, scores: &'a [f64], labels: &'a [u32]) -> impl Iterator<Item = (&'a [f64], usize)> {
        assert_eq!(
            scores.len(),
            shape.batch * shape.classes,
            "loss reference: scores length"
        );
        assert_eq!(labels.len(), shape.batch, "loss reference: labels length");
        scores.chunks(shape.classes).zip(labels).map(move |(row, &label)| {
            assert!(
                (label as usize) < shape.classes,
                "label {label} out of {} classes",
                shape.classes
            );
            (row, label as usize)
        })
    }

    /// Returns `(mean loss, probs)`. Per row, with `m` the row maximum:
    /// `loss = m + ln(sum_c exp(z_c - m)) - z_label`, `p_c = exp(z_c - m) / sum`.
    pub fn softmax_cross_entropy_forward(shape: LossShape, logits: &[f64], labels: &[u32]) -> (f64, Vec<f64>) {
        let mut total = 0.0;
        let mut probs = Vec::with_capacity(logits.len());
        for (row, label) in rows(shape, logits, labels) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|&z| (z - max).exp()).sum();
            total += max + sum.ln() - row[label];
            probs.extend(row.iter().map(|&z| (z - max).exp() / sum));
        }
        (total / shape.batch as f64, probs)
    }

    pub fn softmax_cross_entropy_backward(shape: LossShape, probs: &[f64], labels: &[u32]) -> Vec<f64> {
        let mut dlogits = Vec::with_capacity(probs.len());
        for (row, label) in rows(shape, probs, labels) {
            dlogits.extend(row.iter().enumerate().map(|(c, &p)| {
                let target = if c == label { 1.0 } else { 0.0 };
                (p - target) / shape.batch as f64
            }));
        }
        dlogits
    }

    pub fn top_k_correct(shape: LossShape, logits: &[f64], labels: &[u32], k: usize) -> usize {
        rows(shape, logits, labels)
            .filter(|(row, label)| row.iter().filter(|&&z| z > row[*label]).count() < k)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_gradient, context};

    fn random_labels(rng: &mut Rng, shape: LossShape) -> Vec<u32> {
        (0..shape.batch).map(|_| rng.below(shape.classes) as u32).collect()
    }

    #[test]
    fn softmax_cross_entropy_reference_matches_hand_computed_values() {
        // Row [0, ln 3] with label 1: p = [1/4, 3/4], loss = ln(4/3).
        let shape = LossShape { batch: 1, classes: 2 };
        let (loss, probs) = cpu::softmax_cross_entropy_forward(shape, &[0.0, 3f64.ln()], &[1]);
        assert!((loss - (4.0f64 / 3.0).ln()).abs() < 1e-12, "loss {loss}");
        assert!(
            (probs[0] - 0.25).abs() < 1e-12 && (probs[1] - 0.75).abs() < 1e-12,
            "{probs:?}"
        );
        // Huge logits stay finite: [1000, 0], label 1 -> loss 1000.
        let (loss, _) = cpu::softmax_cross_entropy_forward(shape, &[1000.0, 0.0], &[1]);
        assert!((loss - 1000.0).abs() < 1e-9, "loss {loss}");
    }

    #[test]
    fn softmax_cross_entropy_gpu_matches_reference_forward_and_backward() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(31);
        // (batch, classes, logit range). Logits of +-100 overflow exp() in f32
        // (e^88.7 is the largest finite f32) unless the row maximum is subtracted;
        // batch 300 exceeds the 256 rows handled in parallel.
        let cases = [
            (1, 10, 3.0),
            (3, 7, 3.0),
            (128, 10, 5.0),
            (300, 10, 5.0),
            (4, 1000, 100.0),
        ];
        for (batch, classes, range) in cases {
            let shape = LossShape { batch, classes };
            let logits = rng.vec(batch * classes, -range, range);
            let labels = random_labels(&mut rng, shape);
            let (loss_ref, probs_ref) = cpu::softmax_cross_entropy_forward(shape, &logits, &labels);
            let dlogits_ref = cpu::softmax_cross_entropy_backward(shape, &probs_ref, &labels);

            let logits_t = Tensor::from_f64(device, &[batch, classes], &logits).unwrap();
            let labels_t = Tensor::from_u32(device, &[batch], &labels).unwrap();
            let probs_t = Tensor::zeros(device, &[batch, classes]).unwrap();
            let loss_t = Tensor::zeros(device, &[1]).unwrap();
            let dlogits_t = Tensor::zeros(device, &[batch, classes]).unwrap();
            let mut dispatches =
                softmax_cross_entropy_forward(device, &ctx.kernels, shape, &logits_t, &labels_t, &probs_t, &loss_t);
            dispatches.push(softmax_cross_entropy_backward(
                device,
                &ctx.kernels,
                shape,
                &probs_t,
                &labels_t,
                &dlogits_t,
            ));
            ctx.run(&dispatches.iter().collect::<Vec<_>>());

            let what = format!("{shape:?} logits +-{range}");
            // The loss is O(range); f32 log-sum-exp carries ~1e-7 relative error per
            // term, so 1e-5 relative (plus 1e-5 for small losses) is ample and would
            // still catch a wrong label or a missing max shift (inf / NaN).
            let loss_gpu = loss_t.read_blocking(device, queue).unwrap();
            assert_close(&format!("loss {what}"), &loss_gpu, &[loss_ref], 1e-5, 1e-5);
            // Probabilities in [0, 1]; exp() in f32 is accurate to a few ulp, so
            // 1e-6 absolute (underflowed tails read as 0) plus 1e-5 relative.
            let probs_gpu = probs_t.read_blocking(device, queue).unwrap();
            assert_close(&format!("probs {what}"), &probs_gpu, &probs_ref, 1e-6, 1e-5);
            let dlogits_gpu = dlogits_t.read_blocking(device, queue).unwrap();
            let atol = 1e-6 / batch as f64;
            assert_close(&format!("dlogits {what}"), &dlogits_gpu, &dlogits_ref, atol, 1e-5);
        }
    }

    #[test]
    fn softmax_cross_entropy_reference_backward_matches_finite_differences() {
        let mut rng = Rng::new(32);
        for (batch, classes) in [(1, 10), (3, 7)] {
            let shape = LossShape { batch, classes };
            let logits = rng.vec(batch * classes, -3.0, 3.0);
            let labels = random_labels(&mut rng, shape);
            let (_, probs) = cpu::softmax_cross_entropy_forward(shape, &logits, &labels);
            assert_gradient(
                &format!("softmax cross-entropy dlogits {shape:?}"),
                |z: &[f64]| cpu::softmax_cross_entropy_forward(shape, z, &labels).0,
                &logits,
                &cpu::softmax_cross_entropy_backward(shape, &probs, &labels),
            );
        }
    }

    #[test]
    fn top_k_reference_matches_hand_computed_ties() {
        let shape = LossShape { batch: 2, classes: 3 };
        // Row 0: label 1 (2.0) has one strictly greater logit; row 1: label 0 ties
        // the maximum (3.0) and has none strictly greater.
        let logits = [1.0, 2.0, 3.0, 3.0, 3.0, 1.0];
        assert_eq!(cpu::top_k_correct(shape, &logits, &[1, 0], 1), 1);
        assert_eq!(cpu::top_k_correct(shape, &logits, &[1, 0], 2), 2);
        assert_eq!(cpu::top_k_correct(shape, &logits, &[0, 2], 2), 0);
    }

    #[test]
    fn top_k_gpu_matches_reference_with_ties() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(33);
        for (batch, classes) in [(1, 10), (3, 7), (128, 10), (300, 10), (4, 1000)] {
            let shape = LossShape { batch, classes };
            // Few distinct levels: most rows have ties around the label's logit.
            let logits: Vec<f64> = (0..batch * classes).map(|_| rng.below(4) as f64).collect();
            let labels = random_labels(&mut rng, shape);
            let logits_t = Tensor::from_f64(device, &[batch, classes], &logits).unwrap();
            let labels_t = Tensor::from_u32(device, &[batch], &labels).unwrap();
            for k in [1, 5] {
                let want = cpu::top_k_correct(shape, &logits, &labels, k);
                let correct_t = Tensor::from_u32(device, &[1], &[u32::MAX]).unwrap();
                let dispatch = top_k_correct(device, &ctx.kernels, shape, &logits_t, &labels_t, k, &correct_t);
                ctx.run(&[&dispatch]);
                let got = correct_t.read_u32_blocking(device, queue).unwrap();
                assert_eq!(got, [want as u32], "top-{k} correct for {shape:?}");
            }
        }
    }
}
