//! A network as a list of layer operations over numbered tensors: the one
//! description that the GPU plan and the CPU reference both execute.

use crate::layers::batch_norm::BatchNormShape;
use crate::layers::conv2d::Conv2dShape;
use crate::layers::linear::LinearShape;
use crate::layers::pool::{GlobalAvgPoolShape, MaxPoolShape};
use crate::layers::residual::ShortcutAShape;
use crate::rng::Rng;

/// An activation tensor of the graph.
pub type TensorId = usize;
/// A trainable parameter of the graph.
pub type ParamId = usize;
/// A batch norm's running statistics.
pub type BatchNormId = usize;

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// He (Kaiming) normal, fan-in mode: std = sqrt(2 / fan_in).
    HeNormal {
        fan_in: usize,
    },
    /// Uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)] (PyTorch's default bias).
    FanInUniform {
        fan_in: usize,
    },
    Constant(f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// torchvision-style name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormSpec {
    /// Prefix of the torchvision names (`bn1` for `bn1.running_mean`, ...).
    pub name: String,
    pub channels: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Conv2d {
        shape: Conv2dShape,
        x: TensorId,
        w: ParamId,
        y: TensorId,
    },
    BatchNorm {
        shape: BatchNormShape,
        x: TensorId,
        gamma: ParamId,
        beta: ParamId,
        stats: BatchNormId,
        y: TensorId,
    },
    Relu {
        x: TensorId,
        y: TensorId,
    },
    Add {
        a: TensorId,
        b: TensorId,
        y: TensorId,
    },
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
        w: ParamId,
        b: ParamId,
        y: TensorId,
    },
}

impl Op {
    /// The activations this op reads.
    pub fn inputs(&self) -> Vec<TensorId> {
        match *self {
            Op::Add { a, b, .. } => vec![a, b],
            Op::Conv2d { x, .. }
            | Op::BatchNorm { x, .. }
            | Op::Relu { x, .. }
            | Op::ShortcutA { x, .. }
            | Op::MaxPool { x, .. }
            | Op::GlobalAvgPool { x, .. }
            | Op::Linear { x, .. } => vec![x],
        }
    }

    /// The activation this op writes.
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Conv2d { y, .. }
            | Op::BatchNorm { y, .. }
            | Op::Relu { y, .. }
            | Op::Add { y, .. }
            | Op::ShortcutA { y, .. }
            | Op::MaxPool { y, .. }
            | Op::GlobalAvgPool { y, .. }
            | Op::Linear { y, .. } => y,
        }
    }
}

/// Batch norm constants shared by every network (PyTorch's defaults).
pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// Parameters live in one flat buffer; each starts at a multiple of this many
/// elements so it can be bound as a view (WebGPU's 256-byte offset alignment).
pub const PARAM_ALIGNMENT: usize = crate::tensor::VIEW_ALIGNMENT;

#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub batch: usize,
    /// Shapes of the activations, indexed by [`TensorId`].
    pub tensors: Vec<Vec<usize>>,
    pub params: Vec<ParamSpec>,
    pub batch_norms: Vec<BatchNormSpec>,
    pub ops: Vec<Op>,
    pub input: TensorId,
    pub logits: TensorId,
    pub classes: usize,
}

impl Graph {
    /// Start of each parameter in the flat buffer, and the buffer's length.
    pub fn param_offsets(&self) -> (Vec<usize>, usize) {
        let mut offsets = Vec::with_capacity(self.params.len());
        let mut end = 0;
        for p in &self.params {
            offsets.push(end);
            end += p.len().next_multiple_of(PARAM_ALIGNMENT);
        }
        (offsets, end.max(PARAM_ALIGNMENT))
    }

    /// Number of trainable values (without alignment padding).
    pub fn param_count(&self) -> usize {
        self.params.iter().map(ParamSpec::len).sum()
    }

    /// Deterministic initial parameters in the flat layout (padding is zero).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let (offsets, len) = self.param_offsets();
        let mut flat = vec![0.0f32; len];
        let mut rng = Rng::new(seed);
        for (spec, &start) in self.params.iter().zip(&offsets) {
            for v in &mut flat[start..start + spec.len()] {
                *v = match spec.init {
                    Init::HeNormal { fan_in } => (rng.normal() * (2.0 / fan_in as f64).sqrt()) as f32,
                    Init::FanInUniform { fan_in } => {
                        let bound = 1.0 / (fan_in as f64).sqrt();
                        rng.range(-bound, bound) as f32
                    }
                    Init::Constant(c) => c,
                };
            }
        }
        flat
    }

    /// Forward multiply-adds x 2 for one image (convolutions and the classifier).
    pub fn forward_flops_per_image(&self) -> f64 {
        let per_batch: f64 = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Conv2d { shape, .. } => shape.flops(),
                Op::Linear { shape, .. } => 2.0 * (shape.batch * shape.in_features * shape.out_features) as f64,
                _ => 0.0,
            })
            .sum();
        per_batch / self.batch as f64
    }

    /// How many ops read each activation (a fork's gradient is a sum).
    pub fn consumers(&self) -> Vec<usize> {
        let mut count = vec![0; self.tensors.len()];
        for op in &self.ops {
            for t in op.inputs() {
                count[t] += 1;
            }
        }
        count
    }
}

/// Builds graphs layer by layer, naming parameters as torchvision does.
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    /// A graph whose input is a batch of `[channels, h, w]` images.
    pub fn new(batch: usize, channels: usize, h: usize, w: usize) -> Self {
        Self {
            graph: Graph {
                batch,
                tensors: vec![vec![batch, channels, h, w]],
                params: Vec::new(),
                batch_norms: Vec::new(),
                ops: Vec::new(),
                input: 0,
                logits: 0,
                classes: 0,
            },
        }
    }

    pub fn input(&self) -> TensorId {
        self.graph.input
    }

    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.graph.tensors[t]
    }

    fn tensor(&mut self, shape: Vec<usize>) -> TensorId {
        self.graph.tensors.push(shape);
        self.graph.tensors.len() - 1
    }

    fn param(&mut self, name: String, shape: Vec<usize>, init: Init) -> ParamId {
        self.graph.params.push(ParamSpec { name, shape, init });
        self.graph.params.len() - 1
    }

    fn nchw(&self, t: TensorId) -> [usize; 4] {
        let s = self.shape(t);
        assert_eq!(s.len(), 4, "expected an NCHW tensor, got {s:?}");
        [s[0], s[1], s[2], s[3]]
    }

    /// Bias-free convolution named `{name}.weight`.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: TensorId,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> TensorId {
        let [batch, in_channels, in_h, in_w] = self.nchw(x);
        let shape = Conv2dShape::new(batch, in_channels, (in_h, in_w), out_channels, kernel, stride, pad);
        let fan_in = in_channels * kernel * kernel;
        let w = self.param(
            format!("{name}.weight"),
            vec![out_channels, in_channels, kernel, kernel],
            Init::HeNormal { fan_in },
        );
        let y = self.tensor(vec![batch, out_channels, shape.out_h(), shape.out_w()]);
        self.graph.ops.push(Op::Conv2d { shape, x, w, y });
        y
    }

    /// Batch norm named `{name}.weight`, `.bias`, `.running_mean`, `.running_var`.
    pub fn batch_norm(&mut self, name: &str, x: TensorId) -> TensorId {
        let [batch, channels, h, w] = self.nchw(x);
        let gamma = self.param(format!("{name}.weight"), vec![channels], Init::Constant(1.0));
        let beta = self.param(format!("{name}.bias"), vec![channels], Init::Constant(0.0));
        self.graph.batch_norms.push(BatchNormSpec {
            name: name.to_string(),
            channels,
        });
        let stats = self.graph.batch_norms.len() - 1;
        let shape = BatchNormShape {
            batch,
            channels,
            spatial: h * w,
        };
        let y = self.tensor(vec![batch, channels, h, w]);
        self.graph.ops.push(Op::BatchNorm {
            shape,
            x,
            gamma,
            beta,
            stats,
            y,
        });
        y
    }

    pub fn relu(&mut self, x: TensorId) -> TensorId {
        let y = self.tensor(self.shape(x).to_vec());
        self.graph.ops.push(Op::Relu { x, y });
        y
    }

    pub fn add(&mut self, a: TensorId, b: TensorId) -> TensorId {
        assert_eq!(self.shape(a), self.shape(b), "residual add of different shapes");
        let y = self.tensor(self.shape(a).to_vec());
        self.graph.ops.push(Op::Add { a, b, y });
        y
    }

    /// Option-A shortcut: subsample by `stride`, zero-pad to `out_channels`.
    pub fn shortcut_a(&mut self, x: TensorId, out_channels: usize, stride: usize) -> TensorId {
        let [batch, in_channels, in_h, in_w] = self.nchw(x);
        let shape = ShortcutAShape {
            batch,
            in_channels,
            out_channels,
            in_h,
            in_w,
            stride,
        };
        let y = self.tensor(vec![batch, out_channels, shape.out_h(), shape.out_w()]);
        self.graph.ops.push(Op::ShortcutA { shape, x, y });
        y
    }

    pub fn max_pool(&mut self, x: TensorId, kernel: usize, stride: usize, pad: usize) -> TensorId {
        let [batch, channels, in_h, in_w] = self.nchw(x);
        let shape = MaxPoolShape {
            batch,
            channels,
            in_h,
            in_w,
            kernel,
            stride,
            pad,
        };
        let y = self.tensor(vec![batch, channels, shape.out_h(), shape.out_w()]);
        self.graph.ops.push(Op::MaxPool { shape, x, y });
        y
    }

    pub fn global_avg_pool(&mut self, x: TensorId) -> TensorId {
        let [batch, channels, h, w] = self.nchw(x);
        let shape = GlobalAvgPoolShape {
            batch,
            channels,
            spatial: h * w,
        };
        let y = self.tensor(vec![batch, channels]);
        self.graph.ops.push(Op::GlobalAvgPool { shape, x, y });
        y
    }

    /// Fully connected layer named `{name}.weight` `[out, in]` and `{name}.bias`.
    pub fn linear(&mut self, name: &str, x: TensorId, out_features: usize) -> TensorId {
        let s = self.shape(x).to_vec();
        assert_eq!(s.len(), 2, "linear expects [batch, features], got {s:?}");
        let shape = LinearShape {
            batch: s[0],
            in_features: s[1],
            out_features,
        };
        let w = self.param(
            format!("{name}.weight"),
            vec![out_features, s[1]],
            Init::HeNormal { fan_in: s[1] },
        );
        let b = self.param(
            format!("{name}.bias"),
            vec![out_features],
            Init::FanInUniform { fan_in: s[1] },
        );
        let y = self.tensor(vec![s[0], out_features]);
        self.graph.ops.push(Op::Linear { shape, x, w, b, y });
        y
    }

    /// Conv then batch norm, named `{prefix}conv{index}` and `{prefix}bn{index}`
    /// as in torchvision; "same" padding.
    pub fn conv_bn(
        &mut self,
        prefix: &str,
        index: usize,
        x: TensorId,
        out: usize,
        kernel: usize,
        stride: usize,
    ) -> TensorId {
        let conv = self.conv2d(&format!("{prefix}conv{index}"), x, out, kernel, stride, kernel / 2);
        self.batch_norm(&format!("{prefix}bn{index}"), conv)
    }

    /// Finishes the graph with `logits` as the output.
    pub fn finish(mut self, logits: TensorId) -> Graph {
        let s = self.shape(logits).to_vec();
        assert_eq!(s.len(), 2, "logits must be [batch, classes], got {s:?}");
        self.graph.logits = logits;
        self.graph.classes = s[1];
        self.graph
    }
}

/// A gradient buffer of the backward pass.
pub type GradId = usize;

/// One step of the backward pass.
#[derive(Clone, Debug, PartialEq)]
pub enum GradStep {
    /// The backward of `ops[op]`: reads the gradient `dy` of its output and
    /// writes the gradient of each input (`None`: not needed, e.g. the images)
    /// and of its parameters (into the flat gradient buffer).
    Op {
        op: usize,
        dy: GradId,
        dx: Vec<Option<GradId>>,
    },
    /// `y = a + b`: an activation read by two ops gets the sum of their gradients.
    Accumulate { a: GradId, b: GradId, y: GradId },
}

/// The backward pass of a graph, derived once from its ops.
#[derive(Clone, Debug, PartialEq)]
pub struct BackwardSchedule {
    /// Shapes of the gradient buffers, indexed by [`GradId`].
    pub grads: Vec<Vec<usize>>,
    /// The gradient of the logits (written by the loss).
    pub logits_grad: GradId,
    pub steps: Vec<GradStep>,
}

impl Graph {
    /// Reverse-mode schedule: ops in reverse, a residual add passing its output
    /// gradient to both inputs without a copy, forks summed.
    pub fn backward_schedule(&self) -> BackwardSchedule {
        let mut schedule = BackwardSchedule {
            grads: vec![self.tensors[self.logits].clone()],
            logits_grad: 0,
            steps: Vec::new(),
        };
        let mut grad_of: Vec<Option<GradId>> = vec![None; self.tensors.len()];
        grad_of[self.logits] = Some(0);
        for (index, op) in self.ops.iter().enumerate().rev() {
            let Some(dy) = grad_of[op.output()] else { continue };
            if let Op::Add { a, b, .. } = *op {
                for x in [a, b] {
                    self.contribute(&mut schedule, &mut grad_of, x, dy);
                }
                continue;
            }
            let dx: Vec<Option<GradId>> = op
                .inputs()
                .into_iter()
                .map(|x| (x != self.input).then(|| schedule.new_grad(&self.tensors[x])))
                .collect();
            schedule.steps.push(GradStep::Op {
                op: index,
                dy,
                dx: dx.clone(),
            });
            for (x, g) in op.inputs().into_iter().zip(dx) {
                if let Some(g) = g {
                    self.contribute(&mut schedule, &mut grad_of, x, g);
                }
            }
        }
        schedule
    }

    /// Records `g` as (part of) the gradient of activation `t`.
    fn contribute(&self, schedule: &mut BackwardSchedule, grad_of: &mut [Option<GradId>], t: TensorId, g: GradId) {
        grad_of[t] = Some(match grad_of[t] {
            None => g,
            Some(a) => {
                let y = schedule.new_grad(&self.tensors[t]);
                schedule.steps.push(GradStep::Accumulate { a, b: g, y });
                y
            }
        });
    }
}

impl BackwardSchedule {
    fn new_grad(&mut self, shape: &[usize]) -> GradId {
        self.grads.push(shape.to_vec());
        self.grads.len() - 1
    }
}
