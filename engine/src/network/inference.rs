//! The fast inference path: every batch norm folded into the convolution
//! before it at load, and the ReLU or residual add (plus ReLU) after it fused
//! into that convolution's epilogue, so a ResNet's forward is one dispatch per
//! convolution plus the few ops left (option-A shortcuts, pools, classifier).
//!
//! [`FoldedNetwork`] is the folded description; [`cpu::infer`] runs it on the
//! CPU (the browser's fallback without WebGPU) and [`InferencePlan`] on the GPU.

use super::graph::{BN_EPS, Graph, Op, TensorId};
use crate::kernel::{DeviceVerdict, Kernel, checked_by_device, with_device_verdict};
pub use crate::layers::conv2d::SpecialisedLayers;
use crate::layers::conv2d::winograd::{
    WinogradScratch, conv2d_forward_winograd, upload_winograd_weights, winograd_applies, winograd_forward_kernels,
};
use crate::layers::conv2d::{Conv2dShape, conv2d_forward_fused, conv2d_forward_fused_kernel, upload_forward_weights};
use crate::layers::linear::{LinearShape, linear_forward, linear_forward_kernel};
use crate::layers::pool::{
    GlobalAvgPoolShape, MaxPoolShape, global_avg_pool_forward, global_avg_pool_forward_kernel, max_pool_forward,
    max_pool_forward_kernel,
};
use crate::layers::residual::{ShortcutAShape, shortcut_a_forward, shortcut_a_forward_kernel};
use crate::model::{Model, ModelError};
use crate::tensor::{read_tensors_after, staging_buffer};
use crate::{Dispatch, EngineError, Kernels, Tensor};
use std::collections::BTreeSet;
use std::sync::Mutex;

pub mod cpu;

/// A convolution with its batch norm folded in and what follows it fused:
/// `y = relu?(conv2d(x, weight) + bias + residual?)`.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedConv {
    pub shape: Conv2dShape,
    /// OIHW, output channel `co` scaled by `gamma / sqrt(var + eps)`.
    pub weight: Vec<f32>,
    /// `beta - mean * gamma / sqrt(var + eps)` per output channel (0 where no
    /// batch norm follows).
    pub bias: Vec<f32>,
    pub x: TensorId,
    /// The other operand of a fused residual add (the shortcut).
    pub residual: Option<TensorId>,
    pub relu: bool,
    pub y: TensorId,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FoldedOp {
    Conv(FoldedConv),
    ShortcutA {
        shape: ShortcutAShape,
        x: TensorId,
        y: TensorId,
    },
    MaxPool {
        shape: MaxPoolShape,
        x: TensorId,
        y: TensorId,
    },
    GlobalAvgPool {
        shape: GlobalAvgPoolShape,
        x: TensorId,
        y: TensorId,
    },
    Linear {
        shape: LinearShape,
        x: TensorId,
        /// `[out, in]`.
        weight: Vec<f32>,
        bias: Vec<f32>,
        y: TensorId,
    },
}

impl FoldedOp {
    /// The activations this op reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            FoldedOp::Conv(c) => std::iter::once(c.x).chain(c.residual).collect(),
            FoldedOp::ShortcutA { x, .. }
            | FoldedOp::MaxPool { x, .. }
            | FoldedOp::GlobalAvgPool { x, .. }
            | FoldedOp::Linear { x, .. } => vec![*x],
        }
    }

    /// The activation this op writes.
    pub fn output(&self) -> TensorId {
        match self {
            FoldedOp::Conv(c) => c.y,
            FoldedOp::ShortcutA { y, .. }
            | FoldedOp::MaxPool { y, .. }
            | FoldedOp::GlobalAvgPool { y, .. }
            | FoldedOp::Linear { y, .. } => *y,
        }
    }
}

/// A model prepared for inference on a batch of a fixed size.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedNetwork {
    /// Shapes of the activations, indexed by the graph's `TensorId`s; those
    /// fused away are never written.
    pub tensors: Vec<Vec<usize>>,
    pub input: TensorId,
    pub logits: TensorId,
    pub classes: usize,
    /// In execution order.
    pub ops: Vec<FoldedOp>,
    /// What [`cpu::infer`] prepares on its first call (packed weights,
    /// buffers) from `ops` as they are then.
    cpu: cpu::Cache,
}

impl FoldedNetwork {
    /// Folds `model` (in eval mode: running statistics) for `batch` images.
    pub fn new(model: &Model, batch: usize) -> Result<Self, ModelError> {
        if batch == 0 {
            return Err(ModelError::Unsupported("an inference batch of 0 images".into()));
        }
        let graph = model.spec.graph(batch)?;
        let (offsets, len) = graph.param_offsets();
        let stats_fit = model.running.len() == graph.batch_norms.len()
            && graph
                .batch_norms
                .iter()
                .zip(&model.running)
                .all(|(bn, (mean, var))| mean.len() == bn.channels && var.len() == bn.channels);
        if model.params.len() != len || !stats_fit {
            return Err(ModelError::Mismatch {
                arch: model.spec.architecture.name(),
                problems: format!(
                    "  {} parameter values (expected {len}) or running statistics of the wrong size",
                    model.params.len()
                ),
            });
        }
        let param = |id: usize| &model.params[offsets[id]..offsets[id] + graph.params[id].len()];
        let ops = fold(&graph, &param, &model.running)?;
        Ok(Self {
            ops,
            input: graph.input,
            logits: graph.logits,
            classes: graph.classes,
            tensors: graph.tensors,
            cpu: cpu::Cache::default(),
        })
    }

    /// Values of one input batch (NCHW).
    pub fn input_len(&self) -> usize {
        self.tensors[self.input].iter().product()
    }

    /// For each activation, the index of the last op that reads it.
    fn last_reads(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.tensors.len()];
        for (i, op) in self.ops.iter().enumerate() {
            for t in op.inputs() {
                last[t] = Some(i);
            }
        }
        last
    }
}

/// The graph's ops with each batch norm folded into the convolution before it
/// and a following ReLU, or residual add and ReLU, fused into it too. The
/// intermediate activations must have no other reader.
fn fold<'a>(
    graph: &Graph,
    param: &dyn Fn(usize) -> &'a [f32],
    running: &[(Vec<f32>, Vec<f32>)],
) -> Result<Vec<FoldedOp>, ModelError> {
    let mut readers = vec![Vec::new(); graph.tensors.len()];
    for (i, op) in graph.ops.iter().enumerate() {
        for t in op.inputs() {
            readers[t].push(i);
        }
    }
    let mut absorbed = vec![false; graph.ops.len()];
    // The op that alone reads `t`, unless already fused (the two operands of
    // an add may both come from convolutions: the first one takes it).
    let sole_reader = |t: TensorId, absorbed: &[bool]| match readers[t][..] {
        [j] if !absorbed[j] => Some((j, graph.ops[j])),
        _ => None,
    };
    // A folded op takes the place of the last graph op it absorbs: by then all
    // its inputs, the residual included, have been computed.
    let mut placed: Vec<Option<FoldedOp>> = vec![None; graph.ops.len()];
    for (i, op) in graph.ops.iter().enumerate() {
        if absorbed[i] {
            continue;
        }
        let (last, folded) = match *op {
            Op::Conv2d { shape, x, w, y } => {
                let mut conv = FoldedConv {
                    shape,
                    weight: param(w).to_vec(),
                    bias: vec![0.0; shape.out_channels],
                    x,
                    residual: None,
                    relu: false,
                    y,
                };
                let mut last = i;
                if let Some((
                    j,
                    Op::BatchNorm {
                        gamma, beta, stats, y, ..
                    },
                )) = sole_reader(conv.y, &absorbed)
                {
                    fold_batch_norm(&mut conv, param(gamma), param(beta), &running[stats]);
                    (conv.y, last, absorbed[j]) = (y, j, true);
                }
                if let Some((j, Op::Add { a, b, y })) = sole_reader(conv.y, &absorbed)
                    && a != b
                {
                    conv.residual = Some(if a == conv.y { b } else { a });
                    (conv.y, last, absorbed[j]) = (y, j, true);
                }
                if let Some((j, Op::Relu { y, .. })) = sole_reader(conv.y, &absorbed) {
                    conv.relu = true;
                    (conv.y, last, absorbed[j]) = (y, j, true);
                }
                (last, FoldedOp::Conv(conv))
            }
            Op::ShortcutA { shape, x, y } => (i, FoldedOp::ShortcutA { shape, x, y }),
            Op::MaxPool { shape, x, y } => (i, FoldedOp::MaxPool { shape, x, y }),
            Op::GlobalAvgPool { shape, x, y } => (i, FoldedOp::GlobalAvgPool { shape, x, y }),
            Op::Linear { shape, x, w, b, y } => (
                i,
                FoldedOp::Linear {
                    shape,
                    x,
                    weight: param(w).to_vec(),
                    bias: param(b).to_vec(),
                    y,
                },
            ),
            Op::BatchNorm { .. } | Op::Relu { .. } | Op::Add { .. } => {
                return Err(ModelError::Unsupported(format!(
                    "graph op {i} (a batch norm, ReLU or residual add) does not follow a convolution, so inference cannot fuse it"
                )));
            }
        };
        placed[last] = Some(folded);
    }
    Ok(placed.into_iter().flatten().collect())
}

/// Eval-mode batch norm, `gamma * (y - mean) / sqrt(var + eps) + beta`, folded
/// into the bias-free convolution that computes `y` (in f64, rounded once).
fn fold_batch_norm(conv: &mut FoldedConv, gamma: &[f32], beta: &[f32], (mean, var): &(Vec<f32>, Vec<f32>)) {
    let per_channel = conv.weight.len() / conv.shape.out_channels;
    for (co, weights) in conv.weight.chunks_exact_mut(per_channel).enumerate() {
        let scale = f64::from(gamma[co]) / (f64::from(var[co]) + f64::from(BN_EPS)).sqrt();
        for w in weights {
            *w = (f64::from(*w) * scale) as f32;
        }
        conv.bias[co] = (f64::from(beta[co]) - f64::from(mean[co]) * scale) as f32;
    }
}

/// A [`FoldedNetwork`] made executable on the GPU: folded weights uploaded
/// (and transposed) once and every buffer and dispatch created at load, so an
/// inference writes its images, submits one command buffer and reads the
/// logits back.
pub struct InferencePlan {
    input: Tensor,
    logits: Tensor,
    classes: usize,
    dispatches: Vec<Dispatch>,
    /// Reused by every read of the logits.
    staging: wgpu::Buffer,
    /// Taken by the first [`Self::logits`]: awaiting it in the build would
    /// hold a page's load until the browser has compiled every pipeline,
    /// where the first inference overlaps that with decoding its image.
    build_verdict: Mutex<Option<DeviceVerdict>>,
}

impl InferencePlan {
    /// Folds `model` for `batch` images and builds the plan.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        kernels: &Kernels,
        model: &Model,
        batch: usize,
        layers: SpecialisedLayers,
    ) -> Result<Self, EngineError> {
        Self::from_folded(device, queue, kernels, &FoldedNetwork::new(model, batch)?, layers)
    }

    /// Builds the plan of `net`, with specialised kernels in the
    /// convolutions that `layers` names; `queue` takes the weights'
    /// transforms that run on the device (Winograd's), ahead of any
    /// inference. The device's verdict on them, and on every buffer and bind
    /// group made, comes with the first [`Self::logits`].
    pub fn from_folded(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        kernels: &Kernels,
        net: &FoldedNetwork,
        layers: SpecialisedLayers,
    ) -> Result<Self, EngineError> {
        let (plan, verdict) = with_device_verdict(device, || Self::build(device, queue, kernels, net, layers));
        let mut plan = plan?;
        plan.build_verdict = Mutex::new(Some(verdict));
        Ok(plan)
    }

    fn build(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        kernels: &Kernels,
        net: &FoldedNetwork,
        layers: SpecialisedLayers,
    ) -> Result<Self, EngineError> {
        let acts = allocate_activations(device, net)?;
        let act = |t: TensorId| acts[t].as_ref().expect("every activation read is written first");
        // One scratch for every Winograd convolution: they run one by one.
        let winograd = |c: &FoldedConv| winograd_applies(device, kernels, &c.shape, layers);
        let winograd_shapes = Self::winograd_shapes(device, kernels, net, layers);
        let scratch = match winograd_shapes.is_empty() {
            true => None,
            false => Some(WinogradScratch::new(device, &winograd_shapes)?),
        };
        let mut dispatches = Vec::with_capacity(net.ops.len());
        for op in &net.ops {
            let y = act(op.output());
            match op {
                FoldedOp::Conv(c) => {
                    // The plan keeps no handle on its weights: the dispatches'
                    // bind groups hold them.
                    let bias = Tensor::from_slice(device, &[c.bias.len()], &c.bias)?;
                    let residual = c.residual.map(act);
                    match &scratch {
                        Some(scratch) if winograd(c) => {
                            let u = upload_winograd_weights(device, queue, kernels, &c.shape, &c.weight)?;
                            dispatches.extend(conv2d_forward_winograd(
                                device,
                                kernels,
                                &c.shape,
                                act(c.x),
                                &u,
                                &bias,
                                residual,
                                c.relu,
                                y,
                                scratch,
                            ));
                        }
                        _ => {
                            let wt = upload_forward_weights(device, &c.shape, &c.weight)?;
                            dispatches.push(conv2d_forward_fused(
                                device,
                                kernels,
                                &c.shape,
                                act(c.x),
                                &wt,
                                &bias,
                                residual,
                                c.relu,
                                y,
                                layers,
                            ));
                        }
                    }
                }
                FoldedOp::ShortcutA { shape, x, .. } => {
                    dispatches.push(shortcut_a_forward(device, kernels, *shape, act(*x), y))
                }
                FoldedOp::MaxPool { shape, x, .. } => {
                    dispatches.push(max_pool_forward(device, kernels, *shape, act(*x), y))
                }
                FoldedOp::GlobalAvgPool { shape, x, .. } => {
                    dispatches.push(global_avg_pool_forward(device, kernels, *shape, act(*x), y))
                }
                FoldedOp::Linear {
                    shape, x, weight, bias, ..
                } => {
                    let w = Tensor::from_slice(device, &[shape.out_features, shape.in_features], weight)?;
                    let b = Tensor::from_slice(device, &[shape.out_features], bias)?;
                    dispatches.push(linear_forward(device, kernels, *shape, act(*x), &w, &b, y));
                }
            }
        }
        let logits = act(net.logits).clone();
        Ok(Self {
            input: act(net.input).clone(),
            staging: staging_buffer(device, logits.len()),
            logits,
            classes: net.classes,
            dispatches,
            build_verdict: Mutex::new(None),
        })
    }

    /// Whether the plans of `graph`'s network with `a` and with `b` differ:
    /// some convolution runs other kernels in one than in the other.
    pub fn plans_differ(
        device: &wgpu::Device,
        kernels: &Kernels,
        graph: &Graph,
        a: SpecialisedLayers,
        b: SpecialisedLayers,
    ) -> bool {
        let entry_points = |shape, layers| -> Vec<&str> {
            conv_kernels(device, kernels, shape, layers)
                .iter()
                .map(|k| k.entry_point())
                .collect()
        };
        graph.ops.iter().any(|op| match op {
            Op::Conv2d { shape, .. } => entry_points(shape, a) != entry_points(shape, b),
            _ => false,
        })
    }

    /// The shapes of the convolutions of `net` that its plan with `layers`
    /// runs as Winograd.
    fn winograd_shapes(
        device: &wgpu::Device,
        kernels: &Kernels,
        net: &FoldedNetwork,
        layers: SpecialisedLayers,
    ) -> Vec<Conv2dShape> {
        net.ops
            .iter()
            .filter_map(|op| match op {
                FoldedOp::Conv(c) if winograd_applies(device, kernels, &c.shape, layers) => Some(c.shape),
                _ => None,
            })
            .collect()
    }

    /// Creates the pipelines that the plan of `graph`'s network with
    /// `layers` will run, before its weights are there: a browser compiles
    /// them meanwhile (a page can start as soon as the weights file's header
    /// has arrived). Returns their entry points.
    pub fn prepare_kernels(
        device: &wgpu::Device,
        kernels: &Kernels,
        graph: &Graph,
        layers: SpecialisedLayers,
    ) -> BTreeSet<&'static str> {
        let mut prepared = BTreeSet::new();
        for op in &graph.ops {
            let needed: Vec<&Kernel> = match op {
                Op::Conv2d { shape, .. } => conv_kernels(device, kernels, shape, layers),
                Op::ShortcutA { .. } => vec![shortcut_a_forward_kernel(kernels)],
                Op::MaxPool { shape, .. } => vec![max_pool_forward_kernel(kernels, *shape)],
                Op::GlobalAvgPool { .. } => vec![global_avg_pool_forward_kernel(kernels)],
                Op::Linear { shape, .. } => vec![linear_forward_kernel(kernels, *shape)],
                // Folded into the convolutions.
                Op::BatchNorm { .. } | Op::Relu { .. } | Op::Add { .. } => Vec::new(),
            };
            for kernel in needed {
                kernel.prepare(device);
                prepared.insert(kernel.entry_point());
            }
        }
        prepared
    }

    pub fn batch(&self) -> usize {
        self.input.shape[0]
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Uploads a batch of images (NCHW, exactly `batch` of them).
    pub fn write_input(&self, queue: &wgpu::Queue, images: &[f32]) -> Result<(), EngineError> {
        self.input.write(queue, images)
    }

    /// Records one inference into `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        crate::kernel::record(encoder, &self.dispatches);
    }

    /// The dispatches of one inference, in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }

    /// Submits one inference as a single command buffer; nothing is read back.
    pub fn run(&self, device: &wgpu::Device, queue: &wgpu::Queue) {
        let mut encoder = device.create_command_encoder(&Default::default());
        self.record(&mut encoder);
        queue.submit([encoder.finish()]);
    }

    /// The logits (`[batch, classes]`, row-major) of `images`: one command
    /// buffer for the inference and the copy to the staging buffer, awaited
    /// without blocking in the browser. One call at a time: calls share the
    /// staging buffer.
    pub async fn logits(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        images: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        let build_verdict = self.build_verdict.lock().expect("no logits call panics").take();
        let words = checked_by_device(device, async {
            self.write_input(queue, images)?;
            let mut encoder = device.create_command_encoder(&Default::default());
            self.record(&mut encoder);
            read_tensors_after(device, queue, encoder, &[&self.logits], &self.staging).await
        })
        .await;
        // A build the device rejected fails the inference too; its error says why.
        if let Some(verdict) = build_verdict
            && let Some(rejected) = verdict.await
        {
            return Err(EngineError::Device(format!("the inference plan's build: {rejected}")));
        }
        Ok(bytemuck::cast_slice(&words?).to_vec())
    }
}

#[cfg(test)]
impl InferencePlan {
    /// Stands `verdict` in for the device's verdict on the build.
    pub(super) fn replace_build_verdict(&self, verdict: DeviceVerdict) {
        *self.build_verdict.lock().unwrap() = Some(verdict);
    }
}

/// The kernels that the plan with `layers` runs for a convolution of
/// `shape` (Winograd's weight transform, at load, included).
fn conv_kernels<'k>(
    device: &wgpu::Device,
    kernels: &'k Kernels,
    shape: &Conv2dShape,
    layers: SpecialisedLayers,
) -> Vec<&'k Kernel> {
    if winograd_applies(device, kernels, shape, layers) {
        winograd_forward_kernels(kernels, shape).to_vec()
    } else {
        vec![conv2d_forward_fused_kernel(kernels, shape, layers)]
    }
}

/// A tensor for the input and for every activation the ops write. Activations
/// share buffers when their lifetimes do not overlap, so the plan holds a few
/// activations' worth of memory, not the whole network's; the input keeps its
/// own (it is written between runs) and the logits theirs (never read, so
/// never released).
fn allocate_activations(device: &wgpu::Device, net: &FoldedNetwork) -> Result<Vec<Option<Tensor>>, EngineError> {
    let len = |t: TensorId| net.tensors[t].iter().product::<usize>();
    let last_reads = net.last_reads();
    let mut sizes = vec![len(net.input)];
    let mut buffer_of = vec![None; net.tensors.len()];
    buffer_of[net.input] = Some(0);
    let mut free: Vec<usize> = Vec::new();
    for (i, op) in net.ops.iter().enumerate() {
        let need = len(op.output());
        // The smallest free buffer that fits, else the largest one, grown.
        let fitting = free
            .iter()
            .enumerate()
            .filter(|&(_, &b)| sizes[b] >= need)
            .min_by_key(|&(_, &b)| sizes[b]);
        let pick = fitting.or_else(|| free.iter().enumerate().max_by_key(|&(_, &b)| sizes[b]));
        let buffer = match pick.map(|(at, _)| at) {
            Some(at) => free.swap_remove(at),
            None => {
                sizes.push(0);
                sizes.len() - 1
            }
        };
        sizes[buffer] = sizes[buffer].max(need);
        buffer_of[op.output()] = Some(buffer);
        // Released only after the output is placed: no op writes a buffer it
        // reads (WebGPU forbids it within a dispatch).
        let mut inputs = op.inputs();
        inputs.dedup();
        for t in inputs {
            if t != net.input && last_reads[t] == Some(i) {
                free.push(buffer_of[t].expect("an input is written before it is read"));
            }
        }
    }
    let buffers = sizes
        .iter()
        .map(|&n| Tensor::zeros(device, &[n]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(buffer_of
        .iter()
        .zip(&net.tensors)
        .map(|(b, shape)| b.map(|b| buffers[b].view(0, shape)))
        .collect())
}
