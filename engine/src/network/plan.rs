//! A graph made executable on the GPU: every buffer allocated and every
//! dispatch built once, so a training step or an inference only writes its
//! input, records the same dispatches into one command buffer and submits it.

use super::graph::{BN_EPS, BN_MOMENTUM, GradId, GradStep, Graph, Op, TensorId};
use crate::layers::batch_norm::{Epilogue, batch_norm_backward, batch_norm_forward_eval, batch_norm_forward_train};
use crate::layers::conv2d::{
    conv2d_backward_data, conv2d_backward_data_relu, conv2d_backward_weight, conv2d_forward, conv2d_forward_statistics,
};
use crate::layers::linear::{linear_backward_data, linear_backward_weight, linear_forward};
use crate::layers::loss::{LossShape, softmax_cross_entropy_backward, softmax_cross_entropy_forward, top_k_correct};
use crate::layers::pool::{global_avg_pool_backward, global_avg_pool_forward, max_pool_backward, max_pool_forward};
use crate::layers::relu::{relu_backward, relu_forward};
use crate::layers::residual::{add_forward, shortcut_a_backward, shortcut_a_forward};
use crate::layers::sgd::{SgdParams, sgd_step};
use crate::tensor::{read_tensors, staging_buffer};
use crate::{Dispatch, EngineError, Kernels, Tensor};
use std::collections::{HashMap, HashSet};

/// Loss and top-1 hits of the last step, read back on request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub correct: u32,
}

/// Training-only state: gradients, momenta, labels and the backward dispatches.
struct Training {
    labels: Tensor,
    /// Reused by every read of the loss and accuracy.
    stats_staging: wgpu::Buffer,
    param_grads: Tensor,
    loss: Tensor,
    correct: Tensor,
    velocity: Tensor,
    backward: Vec<Dispatch>,
    sgd: Dispatch,
}

pub struct Plan {
    pub graph: Graph,
    /// All parameters, flat (see [`Graph::param_offsets`]).
    pub params: Tensor,
    /// Running mean and variance of each batch norm.
    pub running: Vec<(Tensor, Tensor)>,
    pub input: Tensor,
    activations: Vec<Tensor>,
    forward: Vec<Dispatch>,
    training: Option<Training>,
}

impl Plan {
    /// A plan that trains `graph` by SGD from the flat `params`.
    pub fn training(
        device: &wgpu::Device,
        kernels: &Kernels,
        graph: Graph,
        params: &[f32],
        sgd: SgdParams,
    ) -> Result<Self, EngineError> {
        let running = fresh_running_stats(&graph);
        Self::build(device, kernels, graph, params, &running, Some(sgd))
    }

    /// An eval-mode plan (running statistics) for inference.
    pub fn inference(
        device: &wgpu::Device,
        kernels: &Kernels,
        graph: Graph,
        params: &[f32],
        running: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<Self, EngineError> {
        Self::build(device, kernels, graph, params, running, None)
    }

    fn build(
        device: &wgpu::Device,
        kernels: &Kernels,
        graph: Graph,
        params: &[f32],
        running: &[(Vec<f32>, Vec<f32>)],
        sgd: Option<SgdParams>,
    ) -> Result<Self, EngineError> {
        let (offsets, flat_len) = graph.param_offsets();
        let params = Tensor::from_slice(device, &[flat_len], params)?;
        let param = |flat: &Tensor, id: usize| flat.view(offsets[id], &graph.params[id].shape);
        let running = graph
            .batch_norms
            .iter()
            .zip(running)
            .map(|(bn, (mean, var))| {
                Ok((
                    Tensor::from_slice(device, &[bn.channels], mean)?,
                    Tensor::from_slice(device, &[bn.channels], var)?,
                ))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let acts = graph
            .tensors
            .iter()
            .map(|shape| Tensor::zeros(device, shape))
            .collect::<Result<Vec<_>, _>>()?;
        let train = sgd.is_some();

        // Batch statistics saved by each training-mode batch norm for its backward.
        let mut saved_stats: Vec<Option<(Tensor, Tensor)>> = vec![None; graph.ops.len()];
        let fusions = batch_norm_fusions(&graph);
        // A fused batch norm runs where the last op it absorbs was; those ops
        // do not run.
        let mut order: Vec<Option<usize>> = (0..graph.ops.len()).map(Some).collect();
        for (index, fusion) in fusions.iter().enumerate() {
            if let Some(fusion) = fusion {
                order[index] = None;
                for &absorbed in &fusion.absorbed {
                    order[absorbed] = None;
                }
                order[*fusion.absorbed.last().expect("a fusion absorbs an op")] = Some(index);
            }
        }
        // Training: the partial batch statistics that a convolution left of
        // its output (by tensor), for the batch norm that normalises it.
        let mut partials: Vec<Option<Tensor>> = vec![None; graph.tensors.len()];
        let normalised: HashSet<TensorId> = graph
            .ops
            .iter()
            .filter_map(|op| match *op {
                Op::BatchNorm { x, .. } => Some(x),
                _ => None,
            })
            .collect();
        let mut forward = Vec::new();
        for index in order.into_iter().flatten() {
            let op = &graph.ops[index];
            let y = &acts[op.output()];
            match *op {
                Op::Conv2d { shape, x, w, y: out } => {
                    let (x, w) = (&acts[x], &param(&params, w));
                    let with_statistics = if train && normalised.contains(&out) {
                        conv2d_forward_statistics(device, kernels, &shape, x, w, y)?
                    } else {
                        None
                    };
                    match with_statistics {
                        Some((dispatches, sums)) => {
                            forward.extend(dispatches);
                            partials[out] = Some(sums);
                        }
                        None => forward.extend(conv2d_forward(device, kernels, &shape, x, w, y)?),
                    }
                }
                Op::BatchNorm {
                    shape,
                    x,
                    gamma,
                    beta,
                    stats,
                    ..
                } => {
                    let (gamma, beta) = (param(&params, gamma), param(&params, beta));
                    let (mean, var) = &running[stats];
                    let (epilogue, y) = match &fusions[index] {
                        Some(fusion) => (
                            Epilogue {
                                residual: fusion.residual.map(|t| &acts[t]),
                                relu: fusion.relu,
                            },
                            &acts[fusion.output],
                        ),
                        None => (Epilogue::default(), y),
                    };
                    if train {
                        let saved = (
                            Tensor::zeros(device, &[shape.channels])?,
                            Tensor::zeros(device, &[shape.channels])?,
                        );
                        forward.extend(batch_norm_forward_train(
                            device,
                            kernels,
                            shape,
                            &acts[x],
                            partials[x].as_ref(),
                            &gamma,
                            &beta,
                            mean,
                            var,
                            &saved.0,
                            &saved.1,
                            epilogue,
                            y,
                            BN_MOMENTUM,
                            BN_EPS,
                        ));
                        saved_stats[index] = Some(saved);
                    } else {
                        forward.push(batch_norm_forward_eval(
                            device, kernels, shape, &acts[x], &gamma, &beta, mean, var, epilogue, y, BN_EPS,
                        ));
                    }
                }
                Op::Relu { x, .. } => forward.push(relu_forward(device, kernels, &acts[x], y)),
                Op::Add { a, b, .. } => forward.push(add_forward(device, kernels, &acts[a], &acts[b], y)),
                Op::ShortcutA { shape, x, .. } => forward.push(shortcut_a_forward(device, kernels, shape, &acts[x], y)),
                Op::MaxPool { shape, x, .. } => forward.push(max_pool_forward(device, kernels, shape, &acts[x], y)),
                Op::GlobalAvgPool { shape, x, .. } => {
                    forward.push(global_avg_pool_forward(device, kernels, shape, &acts[x], y))
                }
                Op::Linear { shape, x, w, b, .. } => forward.push(linear_forward(
                    device,
                    kernels,
                    shape,
                    &acts[x],
                    &param(&params, w),
                    &param(&params, b),
                    y,
                )),
            }
        }

        let training = match sgd {
            None => None,
            Some(sgd) => {
                let loss_shape = LossShape {
                    batch: graph.batch,
                    classes: graph.classes,
                };
                let labels = Tensor::from_u32(device, &[graph.batch], &vec![0; graph.batch])?;
                let loss = Tensor::zeros(device, &[1])?;
                let correct = Tensor::zeros(device, &[1])?;
                let probs = Tensor::zeros(device, &graph.tensors[graph.logits])?;
                let logits = &acts[graph.logits];
                forward.extend(softmax_cross_entropy_forward(
                    device, kernels, loss_shape, logits, &labels, &probs, &loss,
                ));
                forward.push(top_k_correct(device, kernels, loss_shape, logits, &labels, 1, &correct));

                let schedule = graph.backward_schedule();
                let grads = schedule
                    .grads
                    .iter()
                    .map(|shape| Tensor::zeros(device, shape))
                    .collect::<Result<Vec<_>, _>>()?;
                let param_grads = Tensor::zeros(device, &[flat_len])?;
                let mut backward = vec![softmax_cross_entropy_backward(
                    device,
                    kernels,
                    loss_shape,
                    &probs,
                    &labels,
                    &grads[schedule.logits_grad],
                )];
                let relu_fusions = relu_backward_fusions(&graph, &schedule.steps);
                // A batch norm whose output gradient is g (op, input), by g:
                // one of them where several share g (a residual sum feeds
                // both the block's last batch norm and its projection
                // shortcut's), since the sums depend on the batch norm's input.
                let batch_norm_input: HashMap<GradId, (usize, TensorId)> = schedule
                    .steps
                    .iter()
                    .filter_map(|step| match *step {
                        GradStep::Op { op, dy, .. } => match graph.ops[op] {
                            Op::BatchNorm { x, .. } => Some((dy, (op, x))),
                            _ => None,
                        },
                        GradStep::Accumulate { .. } => None,
                    })
                    .collect();
                // The partial sums of a batch norm's backward reduce (by op)
                // that the convolution writing its output gradient left.
                let mut reduce_partials: Vec<Option<Tensor>> = vec![None; graph.ops.len()];
                for (index, step) in schedule.steps.iter().enumerate() {
                    match (step, &relu_fusions[index]) {
                        (_, Some(ReluBackwardFusion::Absorbed)) => {}
                        (GradStep::Accumulate { a, b, y }, None) => {
                            backward.push(add_forward(device, kernels, &grads[*a], &grads[*b], &grads[*y]))
                        }
                        (GradStep::Op { op, dy, dx }, fusion) => {
                            let (dx, relu, batch_norm) = match fusion {
                                &Some(ReluBackwardFusion::IntoConv {
                                    residual,
                                    relu_output,
                                    dx,
                                }) => {
                                    let batch_norm = batch_norm_input.get(&dx).copied();
                                    let relu = ReluBackward {
                                        residual: residual.map(|g| &grads[g]),
                                        relu_output: &acts[relu_output],
                                        batch_norm_input: batch_norm.map(|(_, x)| &acts[x]),
                                    };
                                    (Some(&grads[dx]), Some(relu), batch_norm)
                                }
                                _ => (dx[0].map(|g| &grads[g]), None, None),
                            };
                            let (dispatches, partials) = op_backward(
                                device,
                                kernels,
                                &graph.ops[*op],
                                &acts,
                                saved_stats[*op].as_ref(),
                                reduce_partials[*op].as_ref(),
                                &|id| param(&params, id),
                                &|id| param(&param_grads, id),
                                &grads[*dy],
                                dx,
                                relu,
                            )?;
                            backward.extend(dispatches);
                            if let (Some((batch_norm, _)), Some(partials)) = (batch_norm, partials) {
                                reduce_partials[batch_norm] = Some(partials);
                            }
                        }
                        (GradStep::Accumulate { .. }, Some(_)) => unreachable!("fusions go into convolutions"),
                    }
                }
                let velocity = Tensor::zeros(device, &[flat_len])?;
                let sgd = sgd_step(
                    device,
                    kernels,
                    &SgdParams {
                        len: flat_len as u32,
                        ..sgd
                    },
                    &params,
                    &param_grads,
                    &velocity,
                );
                Some(Training {
                    labels,
                    stats_staging: staging_buffer(device, 2),
                    param_grads,
                    loss,
                    correct,
                    velocity,
                    backward,
                    sgd,
                })
            }
        };
        Ok(Self {
            input: acts[graph.input].clone(),
            graph,
            params,
            running,
            activations: acts,
            forward,
            training,
        })
    }

    /// Uploads a batch of images (NCHW) and, when training, their labels.
    pub fn write_batch(&self, queue: &wgpu::Queue, images: &[f32], labels: &[u32]) -> Result<(), EngineError> {
        self.input.write(queue, images)?;
        if let Some(t) = &self.training {
            t.labels.write(queue, bytemuck::cast_slice(labels))?;
        }
        Ok(())
    }

    /// The dispatches of one step, in order: forward; when training also loss,
    /// backward and the SGD update.
    pub fn dispatches(&self) -> impl Iterator<Item = &Dispatch> {
        let training = self
            .training
            .iter()
            .flat_map(|t| t.backward.iter().chain(std::iter::once(&t.sgd)));
        self.forward.iter().chain(training)
    }

    /// Records one step ([`Plan::dispatches`]) into `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        crate::kernel::record(encoder, self.dispatches());
    }

    /// Runs one step dispatch by dispatch, waiting for each: the time of every
    /// dispatch, in step order (see [`crate::kernel::profile`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<Vec<(&Dispatch, std::time::Duration)>, EngineError> {
        crate::kernel::profile(device, queue, self.dispatches())
    }

    /// Submits one step as a single command buffer; nothing is read back.
    pub fn step(&self, device: &wgpu::Device, queue: &wgpu::Queue) {
        let mut encoder = device.create_command_encoder(&Default::default());
        self.record(&mut encoder);
        queue.submit([encoder.finish()]);
    }

    /// Changes the SGD hyper-parameters of later steps (learning-rate schedule).
    pub fn set_sgd(&self, queue: &wgpu::Queue, sgd: SgdParams) {
        if let Some(t) = &self.training {
            let len = t.velocity.len() as u32;
            t.sgd.update_params(queue, &SgdParams { len, ..sgd });
        }
    }

    /// Loss and top-1 hits of the last training step.
    pub async fn read_stats(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<StepStats, EngineError> {
        let t = self
            .training
            .as_ref()
            .ok_or_else(|| EngineError::Device("an inference plan has no loss".into()))?;
        let words = read_tensors(device, queue, &[&t.loss, &t.correct], &t.stats_staging).await?;
        Ok(StepStats {
            loss: f32::from_bits(words[0]),
            correct: words[1],
        })
    }

    /// Copies parameters and running statistics into `other`, a plan of the
    /// same network (e.g. an eval plan of another batch size), on the GPU.
    pub fn copy_weights_to(&self, other: &Plan, encoder: &mut wgpu::CommandEncoder) {
        assert_eq!(self.graph.params, other.graph.params, "plans of different networks");
        let pairs = std::iter::once((&self.params, &other.params)).chain(
            self.running
                .iter()
                .zip(&other.running)
                .flat_map(|((m1, v1), (m2, v2))| [(m1, m2), (v1, v2)]),
        );
        for (from, to) in pairs {
            encoder.copy_buffer_to_buffer(
                &from.buffer,
                from.offset,
                &to.buffer,
                to.offset,
                (from.len() * 4) as u64,
            );
        }
    }

    /// Parameters and running statistics, read back.
    pub async fn read_weights(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
    ) -> Result<(Vec<f32>, Vec<(Vec<f32>, Vec<f32>)>), EngineError> {
        // One round trip for everything: parameters, then each mean and variance.
        let tensors: Vec<&Tensor> = std::iter::once(&self.params)
            .chain(self.running.iter().flat_map(|(mean, var)| [mean, var]))
            .collect();
        let total = tensors.iter().map(|t| t.len()).sum();
        let words = read_tensors(device, queue, &tensors, &staging_buffer(device, total)).await?;
        let mut values: &[f32] = bytemuck::cast_slice(&words);
        let mut take = |len: usize| {
            let (head, rest) = values.split_at(len);
            values = rest;
            head.to_vec()
        };
        let params = take(self.params.len());
        let running = self
            .running
            .iter()
            .map(|(m, v)| (take(m.len()), take(v.len())))
            .collect();
        Ok((params, running))
    }

    /// Overwrites parameters, running statistics and (when training) momenta,
    /// e.g. to resume from a checkpoint.
    pub fn write_weights(
        &self,
        queue: &wgpu::Queue,
        params: &[f32],
        running: &[(Vec<f32>, Vec<f32>)],
        velocity: Option<&[f32]>,
    ) -> Result<(), EngineError> {
        self.params.write(queue, params)?;
        for ((mean, var), (m, v)) in self.running.iter().zip(running) {
            mean.write(queue, m)?;
            var.write(queue, v)?;
        }
        if let (Some(t), Some(v)) = (&self.training, velocity) {
            t.velocity.write(queue, v)?;
        }
        Ok(())
    }

    /// The logits of the last step.
    pub fn logits(&self) -> &Tensor {
        &self.activations[self.graph.logits]
    }

    /// The momentum buffer (flat, like the parameters), when training.
    pub fn velocity(&self) -> Option<&Tensor> {
        self.training.as_ref().map(|t| &t.velocity)
    }

    /// The parameter gradients of the last step (flat), when training.
    pub fn param_grads(&self) -> Option<&Tensor> {
        self.training.as_ref().map(|t| &t.param_grads)
    }
}

/// What a batch norm's normalising pass also does (see [`Epilogue`]): the
/// ops it absorbs, in order, and the tensor it writes in place of theirs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BatchNormFusion {
    pub absorbed: Vec<usize>,
    pub residual: Option<TensorId>,
    pub relu: bool,
    pub output: TensorId,
}

/// For each op, the fusion of a batch norm whose output only a ReLU reads
/// (`relu(bn)`), or only a residual add (`bn + shortcut`), that add's output
/// in turn only a ReLU (`relu(bn + shortcut)`). The outputs fused away are
/// never written: no backward reads them (a ReLU's backward reads its own
/// output, a batch norm's its input, an add's nothing).
pub(crate) fn batch_norm_fusions(graph: &Graph) -> Vec<Option<BatchNormFusion>> {
    let consumers = graph.consumers();
    // The op reading tensor t, where it has exactly one reader.
    let only_reader = |t: TensorId| {
        (consumers[t] == 1)
            .then(|| graph.ops.iter().position(|op| op.inputs().contains(&t)))
            .flatten()
    };
    let mut claimed = vec![false; graph.ops.len()];
    let mut fusions = vec![None; graph.ops.len()];
    for (index, op) in graph.ops.iter().enumerate() {
        let Op::BatchNorm { y, .. } = *op else { continue };
        let Some(next) = only_reader(y).filter(|&next| !claimed[next]) else {
            continue;
        };
        let fusion = match graph.ops[next] {
            Op::Relu { y: output, .. } => BatchNormFusion {
                absorbed: vec![next],
                residual: None,
                relu: true,
                output,
            },
            Op::Add { a, b, y: sum } => {
                let residual = Some(if a == y { b } else { a });
                match only_reader(sum).map(|relu| (relu, graph.ops[relu])) {
                    Some((relu, Op::Relu { y: output, .. })) => BatchNormFusion {
                        absorbed: vec![next, relu],
                        residual,
                        relu: true,
                        output,
                    },
                    _ => BatchNormFusion {
                        absorbed: vec![next],
                        residual,
                        relu: false,
                        output: sum,
                    },
                }
            }
            _ => continue,
        };
        for &absorbed in &fusion.absorbed {
            claimed[absorbed] = true;
        }
        fusions[index] = Some(fusion);
    }
    fusions
}

/// How a backward step runs when ReLU backwards are fused into convolutions'
/// backward-data (see [`relu_backward_fusions`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ReluBackwardFusion {
    /// A convolution's step whose backward-data also runs the ReLU's backward:
    /// it writes `dx`, the gradient of the ReLU's input, masked by the ReLU's
    /// output `relu_output`, after adding `residual`.
    IntoConv {
        residual: Option<GradId>,
        relu_output: TensorId,
        dx: GradId,
    },
    /// A ReLU backward, or the sum of its gradient, that a convolution's step runs.
    Absorbed,
}

/// For each backward step, the fusion it takes part in. A ReLU's backward
/// reads the gradient of its output; where a convolution's backward-data
/// writes that gradient, or one of the two that an [`GradStep::Accumulate`]
/// sums into it (the other written earlier, e.g. by a residual block's
/// shortcut), the convolution's epilogue adds the other and applies the mask,
/// and neither the sum nor the ReLU runs as a pass of its own.
pub(crate) fn relu_backward_fusions(graph: &Graph, steps: &[GradStep]) -> Vec<Option<ReluBackwardFusion>> {
    let mut writer = std::collections::HashMap::new();
    for (index, step) in steps.iter().enumerate() {
        match step {
            GradStep::Op { dx, .. } => writer.extend(dx.iter().flatten().map(|&g| (g, index))),
            GradStep::Accumulate { y, .. } => {
                writer.insert(*y, index);
            }
        }
    }
    // The step of a convolution whose backward-data writes g.
    let conv_writing = |g: GradId| {
        writer.get(&g).copied().filter(|&w| {
            matches!(steps[w], GradStep::Op { op, ref dx, .. }
                if matches!(graph.ops[op], Op::Conv2d { .. }) && dx[0] == Some(g))
        })
    };
    let mut fusions = vec![None; steps.len()];
    for (index, step) in steps.iter().enumerate() {
        let GradStep::Op { op, dy, ref dx } = *step else {
            continue;
        };
        let (Op::Relu { y: relu_output, .. }, Some(relu_dx)) = (graph.ops[op], dx[0]) else {
            continue;
        };
        let (conv, residual, sum) = match conv_writing(dy) {
            Some(conv) => (conv, None, None),
            None => {
                let Some(&sum) = writer.get(&dy) else { continue };
                let GradStep::Accumulate { a, b, .. } = steps[sum] else {
                    continue;
                };
                // The convolution must write the later addend: the other one
                // has to exist when the convolution's epilogue reads it.
                let Some((conv, other)) = [(b, a), (a, b)]
                    .into_iter()
                    .filter_map(|(g, other)| conv_writing(g).map(|conv| (conv, other)))
                    .find(|&(conv, other)| writer.get(&other).is_some_and(|&w| w < conv))
                else {
                    continue;
                };
                (conv, Some(other), Some(sum))
            }
        };
        if fusions[conv].is_some() {
            continue;
        }
        fusions[conv] = Some(ReluBackwardFusion::IntoConv {
            residual,
            relu_output,
            dx: relu_dx,
        });
        fusions[index] = Some(ReluBackwardFusion::Absorbed);
        if let Some(sum) = sum {
            fusions[sum] = Some(ReluBackwardFusion::Absorbed);
        }
    }
    fusions
}

/// PyTorch's initial running statistics: mean 0, variance 1.
pub fn fresh_running_stats(graph: &Graph) -> Vec<(Vec<f32>, Vec<f32>)> {
    graph
        .batch_norms
        .iter()
        .map(|bn| (vec![0.0; bn.channels], vec![1.0; bn.channels]))
        .collect()
}

/// The backward of the ReLU that produced a convolution's input, run by the
/// convolution's backward-data (see [`relu_backward_fusions`]).
struct ReluBackward<'a> {
    /// The gradient that the ReLU's output gets from its other reader.
    residual: Option<&'a Tensor>,
    relu_output: &'a Tensor,
    /// Where the ReLU's input gradient is a training batch norm's output
    /// gradient: that batch norm's input, for the partial sums of its
    /// backward reduce.
    batch_norm_input: Option<&'a Tensor>,
}

/// The backward dispatches of one op: parameter gradients into their views of
/// the flat gradient buffer, and the input gradient into `dx` when wanted.
/// A convolution given `relu` also runs the backward of the ReLU that
/// produced its input, and returns the partial sums of a batch norm's
/// backward reduce where it leaves them; a batch norm given
/// `reduce_partials` reads those.
#[allow(clippy::too_many_arguments)]
fn op_backward(
    device: &wgpu::Device,
    kernels: &Kernels,
    op: &Op,
    acts: &[Tensor],
    saved_stats: Option<&(Tensor, Tensor)>,
    reduce_partials: Option<&Tensor>,
    param: &dyn Fn(usize) -> Tensor,
    grad: &dyn Fn(usize) -> Tensor,
    dy: &Tensor,
    dx: Option<&Tensor>,
    relu: Option<ReluBackward<'_>>,
) -> Result<(Vec<Dispatch>, Option<Tensor>), EngineError> {
    let mut out = Vec::new();
    match *op {
        Op::Conv2d { shape, x, w, .. } => {
            out.extend(conv2d_backward_weight(device, kernels, &shape, &acts[x], dy, &grad(w))?);
            let w = &param(w);
            match (dx, relu) {
                (Some(dx), Some(relu)) => {
                    let (dispatches, partials) = conv2d_backward_data_relu(
                        device,
                        kernels,
                        &shape,
                        dy,
                        w,
                        relu.residual,
                        relu.relu_output,
                        relu.batch_norm_input,
                        dx,
                    )?;
                    out.extend(dispatches);
                    return Ok((out, partials));
                }
                (Some(dx), None) => out.extend(conv2d_backward_data(device, kernels, &shape, dy, w, dx)?),
                (None, _) => {}
            }
        }
        Op::BatchNorm {
            shape, x, gamma, beta, ..
        } => {
            let (mean, inv_std) = saved_stats.expect("training-mode batch norm saves its statistics");
            let dx = dx.expect("a batch norm always follows another op");
            out.extend(batch_norm_backward(
                device,
                kernels,
                shape,
                &acts[x],
                dy,
                reduce_partials,
                &param(gamma),
                mean,
                inv_std,
                dx,
                &grad(gamma),
                &grad(beta),
            ));
        }
        Op::Linear { shape, x, w, b, .. } => {
            out.extend(linear_backward_weight(
                device,
                kernels,
                shape,
                &acts[x],
                dy,
                &grad(w),
                &grad(b),
            ));
            if let Some(dx) = dx {
                out.push(linear_backward_data(device, kernels, shape, dy, &param(w), dx));
            }
        }
        _ => {
            let dx = dx.expect("only parameterised ops run without an input gradient");
            out.push(match *op {
                Op::Relu { y, .. } => relu_backward(device, kernels, &acts[y], dy, dx),
                Op::ShortcutA { shape, .. } => shortcut_a_backward(device, kernels, shape, dy, dx),
                Op::MaxPool { shape, x, .. } => max_pool_backward(device, kernels, shape, &acts[x], dy, dx),
                Op::GlobalAvgPool { shape, .. } => global_avg_pool_backward(device, kernels, shape, dy, dx),
                _ => unreachable!("handled above; Add has no backward dispatch"),
            });
        }
    }
    Ok((out, None))
}
