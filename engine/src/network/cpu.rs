//! The f64 CPU reference executor of a [`Graph`]: the yardstick for the GPU
//! plan, and the inference path where WebGPU is missing.

use super::graph::{BN_EPS, BN_MOMENTUM, GradStep, Graph, Op};
use crate::layers::sgd::SgdParams;
use crate::layers::{batch_norm, conv2d, linear, loss, pool, relu, residual};

/// Running mean and variance of every batch norm, indexed by `BatchNormId`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats(pub Vec<(Vec<f64>, Vec<f64>)>);

impl RunningStats {
    /// PyTorch's initial state: mean 0, variance 1.
    pub fn new(graph: &Graph) -> Self {
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
        Self(
            super::plan::fresh_running_stats(graph)
                .into_iter()
                .map(|(mean, var)| (widen(mean), widen(var)))
                .collect(),
        )
    }
}

/// Parameters in the flat layout of [`Graph::param_offsets`].
pub struct Params<'a> {
    flat: &'a [f64],
    offsets: Vec<usize>,
    graph: &'a Graph,
}

impl<'a> Params<'a> {
    pub fn new(graph: &'a Graph, flat: &'a [f64]) -> Self {
        let (offsets, len) = graph.param_offsets();
        assert_eq!(flat.len(), len, "flat parameter buffer has the wrong length");
        Self { flat, offsets, graph }
    }

    pub fn get(&self, id: usize) -> &'a [f64] {
        &self.flat[self.offsets[id]..self.offsets[id] + self.graph.params[id].len()]
    }
}

/// Runs the graph on `input`; returns every activation (indexed by `TensorId`).
/// Training mode normalises with batch statistics and updates `running`.
pub fn forward(
    graph: &Graph,
    params: &Params,
    running: &mut RunningStats,
    input: &[f64],
    train: bool,
) -> Vec<Vec<f64>> {
    let mut acts: Vec<Vec<f64>> = vec![Vec::new(); graph.tensors.len()];
    acts[graph.input] = input.to_vec();
    for op in &graph.ops {
        let out = match *op {
            Op::Conv2d { shape, x, w, .. } => conv2d::cpu::conv2d_forward(&shape, &acts[x], params.get(w)),
            Op::BatchNorm {
                shape,
                x,
                gamma,
                beta,
                stats,
                ..
            } => {
                let (mean, var) = &mut running.0[stats];
                if train {
                    let out = batch_norm::cpu::batch_norm_forward_train(
                        shape,
                        &acts[x],
                        params.get(gamma),
                        params.get(beta),
                        BN_EPS as f64,
                    );
                    batch_norm::cpu::batch_norm_update_running(
                        shape,
                        &out.mean,
                        &out.var,
                        mean,
                        var,
                        BN_MOMENTUM as f64,
                    );
                    out.y
                } else {
                    batch_norm::cpu::batch_norm_forward_eval(
                        shape,
                        &acts[x],
                        params.get(gamma),
                        params.get(beta),
                        mean,
                        var,
                        BN_EPS as f64,
                    )
                }
            }
            Op::Relu { x, .. } => relu::cpu::relu_forward(&acts[x]),
            Op::Add { a, b, .. } => residual::cpu::add_forward(&acts[a], &acts[b]),
            Op::ShortcutA { shape, x, .. } => residual::cpu::shortcut_a_forward(shape, &acts[x]),
            Op::MaxPool { shape, x, .. } => pool::cpu::max_pool_forward(shape, &acts[x]),
            Op::GlobalAvgPool { shape, x, .. } => pool::cpu::global_avg_pool_forward(shape, &acts[x]),
            Op::Linear { shape, x, w, b, .. } => {
                linear::cpu::linear_forward(shape, &acts[x], params.get(w), params.get(b))
            }
        };
        acts[op.output()] = out;
    }
    acts
}

/// What one reference training step computed (before the SGD update).
pub struct StepOutput {
    pub loss: f64,
    pub logits: Vec<f64>,
    /// Gradients in the flat parameter layout.
    pub grads: Vec<f64>,
}

/// Forward, loss and backward in training mode: the loss, logits and parameter
/// gradients for `labels`; updates `running`.
pub fn forward_backward(
    graph: &Graph,
    flat_params: &[f64],
    running: &mut RunningStats,
    input: &[f64],
    labels: &[u32],
) -> StepOutput {
    let params = Params::new(graph, flat_params);
    let acts = forward(graph, &params, running, input, true);
    let loss_shape = loss::LossShape {
        batch: graph.batch,
        classes: graph.classes,
    };
    let (loss_value, probs) = loss::cpu::softmax_cross_entropy_forward(loss_shape, &acts[graph.logits], labels);
    let schedule = graph.backward_schedule();
    let mut grads: Vec<Vec<f64>> = vec![Vec::new(); schedule.grads.len()];
    grads[schedule.logits_grad] = loss::cpu::softmax_cross_entropy_backward(loss_shape, &probs, labels);
    let mut flat_grads = vec![0.0; flat_params.len()];
    let mut set_param_grad = |id: usize, g: Vec<f64>| {
        let start = params.offsets[id];
        flat_grads[start..start + g.len()].copy_from_slice(&g);
    };
    for step in &schedule.steps {
        match step {
            GradStep::Accumulate { a, b, y } => grads[*y] = residual::cpu::add_forward(&grads[*a], &grads[*b]),
            GradStep::Op { op, dy, dx } => {
                let dy = &grads[*dy];
                let input_grad = match graph.ops[*op] {
                    Op::Conv2d { shape, x, w, .. } => {
                        set_param_grad(w, conv2d::cpu::conv2d_backward_weight(&shape, &acts[x], dy));
                        conv2d::cpu::conv2d_backward_data(&shape, dy, params.get(w))
                    }
                    Op::BatchNorm {
                        shape, x, gamma, beta, ..
                    } => {
                        let (dx, dgamma, dbeta) =
                            batch_norm::cpu::batch_norm_backward(shape, &acts[x], dy, params.get(gamma), BN_EPS as f64);
                        set_param_grad(gamma, dgamma);
                        set_param_grad(beta, dbeta);
                        dx
                    }
                    Op::Relu { y, .. } => relu::cpu::relu_backward(&acts[y], dy),
                    Op::ShortcutA { shape, .. } => residual::cpu::shortcut_a_backward(shape, dy),
                    Op::MaxPool { shape, x, .. } => pool::cpu::max_pool_backward(shape, &acts[x], dy),
                    Op::GlobalAvgPool { shape, .. } => pool::cpu::global_avg_pool_backward(shape, dy),
                    Op::Linear { shape, x, w, b, .. } => {
                        let (dw, db) = linear::cpu::linear_backward_weight(shape, &acts[x], dy);
                        set_param_grad(w, dw);
                        set_param_grad(b, db);
                        linear::cpu::linear_backward_data(shape, dy, params.get(w))
                    }
                    Op::Add { .. } => unreachable!("the schedule passes residual gradients through"),
                };
                if let Some(g) = dx[0] {
                    grads[g] = input_grad;
                }
            }
        }
    }
    StepOutput {
        loss: loss_value,
        logits: acts[graph.logits].clone(),
        grads: flat_grads,
    }
}

/// One SGD training step of the reference; returns its loss and logits.
pub fn train_step(
    graph: &Graph,
    flat_params: &mut [f64],
    velocity: &mut [f64],
    running: &mut RunningStats,
    input: &[f64],
    labels: &[u32],
    sgd: &SgdParams,
) -> StepOutput {
    let out = forward_backward(graph, flat_params, running, input, labels);
    crate::layers::sgd::cpu::sgd_step(sgd, flat_params, &out.grads, velocity);
    out
}

/// Eval-mode logits for a batch.
pub fn infer(graph: &Graph, flat_params: &[f64], running: &RunningStats, input: &[f64]) -> Vec<f64> {
    let mut running = running.clone();
    let acts = forward(graph, &Params::new(graph, flat_params), &mut running, input, false);
    acts[graph.logits].clone()
}
