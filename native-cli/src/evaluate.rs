//! Evaluation of a model on a data set, on the GPU: top-1, top-5, loss, and
//! the confusion matrix.

use crate::data::{BatchLoader, Dataset, Normalization};
use engine::network::Plan;
use engine::{Context, EngineError};
use serde::Serialize;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalResult {
    pub count: usize,
    pub top1_correct: usize,
    pub top5_correct: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// `confusion[label][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl EvalResult {
    pub fn top1(&self) -> f64 {
        self.top1_correct as f64 / self.count.max(1) as f64
    }

    pub fn top5(&self) -> f64 {
        self.top5_correct as f64 / self.count.max(1) as f64
    }

    /// Per-class accuracy (recall), in class order.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| row[c] as f64 / row.iter().sum::<usize>().max(1) as f64)
            .collect()
    }
}

/// Runs `plan` (an inference plan) over every image of `dataset`. A last
/// short batch is padded with zeros and its padding ignored.
pub fn evaluate(
    ctx: &Context,
    plan: &Plan,
    dataset: Arc<Dataset>,
    normalization: &Normalization,
) -> Result<EvalResult, EngineError> {
    let (device, queue) = (ctx.device(), ctx.queue());
    let batch = plan.graph.batch;
    let classes = plan.graph.classes;
    let mut result = EvalResult {
        count: 0,
        top1_correct: 0,
        top5_correct: 0,
        loss: 0.0,
        confusion: vec![vec![0; classes]; classes],
    };
    let mut images = vec![0.0f32; plan.input.len()];
    for b in BatchLoader::eval(dataset, batch, normalization.clone()) {
        images[..b.images.len()].copy_from_slice(&b.images);
        images[b.images.len()..].fill(0.0);
        plan.write_batch(queue, &images, &[])?;
        plan.step(device, queue);
        let logits = plan.logits().read_blocking(device, queue)?;
        for (row, &label) in logits.chunks(classes).zip(&b.labels) {
            let label = label as usize;
            let above = row.iter().filter(|&&v| v > row[label]).count();
            result.top1_correct += usize::from(above == 0);
            result.top5_correct += usize::from(above < 5);
            let predicted = argmax(row);
            result.confusion[label][predicted] += 1;
            result.loss += engine::classify::log_sum_exp(row) - row[label] as f64;
            result.count += 1;
        }
    }
    result.loss /= result.count.max(1) as f64;
    Ok(result)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}
