//! Burn's side of the peer comparison (scripts/bench-peers.sh): a CIFAR
//! ResNet-20 (option A shortcuts, as tests/pytorch_parity.py and our engine
//! build it) trained on Burn's wgpu backend (with its default fusion and
//! autotuning), on the adapter wgpu picks by default: one step is forward,
//! backward and SGD (momentum 0.9, no dampening, weight decay 1e-4) on a
//! random batch, timed until the device is idle again.
//!
//! Batch norm is built from Burn's tensor operations (means over N, H and W)
//! rather than `burn::nn::BatchNorm`: on llvmpipe that module's statistics
//! are wrong (its mean over a channels x (N*H*W) view, `mean_dim` of a
//! [16, 131072] tensor, returns zeros for channels 2 to 15), so the loss
//! reaches 5e13 on the first step and NaN on the second. Running statistics
//! are not kept (a step's timing does not need them). The first step's loss
//! must be finite and near ln(10), or the run fails.
//!
//!     burn-peer [--reps N] [--warmup W] [--batch B]
//!
//! Prints one JSON object: Burn's version, the adapter, the batch and the
//! median step time of N steps after W warm-up steps (which include Burn's
//! autotuning).

use std::time::Instant;

use burn::backend::wgpu::graphics::AutoGraphicsApi;
use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, init_setup};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, DeviceKind, Distribution, Int, Tensor, TensorData};

/// Training-mode batch norm over N, H and W, from tensor operations.
#[derive(Module, Debug)]
struct BatchNorm2d {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
}

impl BatchNorm2d {
    fn new(channels: usize, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [channels] = self.gamma.dims();
        let centered = x.clone() - x.mean_dims(&[0, 2, 3]);
        let variance = (centered.clone() * centered.clone()).mean_dims(&[0, 2, 3]);
        let scale = self.gamma.val().reshape([1, channels, 1, 1]) / (variance + 1e-5).sqrt();
        centered * scale + self.beta.val().reshape([1, channels, 1, 1])
    }
}

#[derive(Module, Debug)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(input: usize, output: usize, stride: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([input, output], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(device);
        Self {
            conv,
            bn: BatchNorm2d::new(output, device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

#[derive(Module, Debug)]
struct BasicBlock {
    first: ConvBn,
    second: ConvBn,
    /// Channels the shortcut adds (option A: zeros on both sides), 0 when
    /// the block keeps its shape.
    pad: usize,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.second.forward(relu(self.first.forward(x.clone())));
        let shortcut = if self.pad == 0 {
            x
        } else {
            // Every second pixel of every second row, then zero channels.
            let [n, c, h, w] = x.dims();
            let sub = x
                .reshape([n, c, h / 2, 2, w / 2, 2])
                .narrow(3, 0, 1)
                .narrow(5, 0, 1)
                .reshape([n, c, h / 2, w / 2]);
            let zeros = Tensor::<4>::zeros([n, self.pad, h / 2, w / 2], &sub.device());
            Tensor::cat(vec![zeros.clone(), sub, zeros], 1)
        };
        relu(y + shortcut)
    }
}

#[derive(Module, Debug)]
struct ResNet20 {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    classifier: Linear,
}

impl ResNet20 {
    fn new(device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut channels = 16;
        for (stage, width) in [16, 32, 64].into_iter().enumerate() {
            for block in 0..3 {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                blocks.push(BasicBlock {
                    first: ConvBn::new(channels, width, stride, device),
                    second: ConvBn::new(width, width, 1, device),
                    pad: (width - channels) / 2,
                });
                channels = width;
            }
        }
        Self {
            stem: ConvBn::new(3, 16, 1, device),
            blocks,
            classifier: LinearConfig::new(64, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem.forward(x));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [n, c, _, _] = x.dims();
        self.classifier.forward(x.mean_dims(&[2, 3]).reshape([n, c]))
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    match args.iter().position(|a| a == name) {
        None => default,
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(v) => v,
            None => {
                eprintln!("burn-peer: {name} needs a whole number");
                std::process::exit(2)
            }
        },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "burn-peer [--reps N (5)] [--warmup W (3)] [--batch B (128)]: times a ResNet-20 training step on Burn's wgpu backend; prints JSON"
        );
        return;
    }
    let (reps, warmup, batch) = (
        arg(&args, "--reps", 5),
        arg(&args, "--warmup", 3),
        arg(&args, "--batch", 128),
    );

    // Bring up the default device ourselves, to name its adapter.
    let setup = init_setup::<AutoGraphicsApi>(&WgpuDevice::default(), RuntimeOptions::default());
    let info = setup.adapter.get_info();
    let adapter = format!("{} ({:?})", info.name, info.backend);
    eprintln!("burn-peer: Burn 0.22.1 on {adapter}");
    let device = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
    device.seed(0);

    let mut model = ResNet20::new(&device);
    let mut optimizer = SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let images = Tensor::<4>::random([batch, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 7 + 3) % 10).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &device);

    let mut times = Vec::new();
    let mut losses = Vec::new();
    for step in 0..warmup + reps {
        let start = Instant::now();
        let logits = model.forward(images.clone());
        let loss = loss_fn.forward(logits, labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(0.1, model, grads);
        device.sync().expect("the device failed");
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        // Read after the clock stops: proof that the steps compute something.
        let loss = loss.into_scalar::<f32>();
        eprintln!(
            "burn-peer: step {} {:.1} ms, loss {loss}{}",
            step + 1,
            elapsed,
            if step < warmup { " (warm-up)" } else { "" }
        );
        // Ten classes, random images: the first loss is about ln 10 = 2.3.
        if step == 0 && !(0.5..10.0).contains(&loss) {
            eprintln!("burn-peer: the first step's loss is {loss}, not near ln(10): Burn computes wrong results here");
            std::process::exit(1);
        }
        losses.push(loss);
        if step >= warmup {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        f64::NAN
    } else {
        times[times.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({
            "system": "Burn 0.22.1",
            "backend": "wgpu (fusion, autotune)",
            "adapter": adapter,
            "workload": format!("resnet20 train b{batch}"),
            "batch": batch,
            "median_ms": median,
            "reps": reps,
            "warmup": warmup,
            "times_ms": times,
            "losses": losses,
        })
    );
}
