//! `resnet-native bench`: convolution and whole-model throughput against the
//! adapter's f32 GEMM ceiling, all measured in one process so the ratios compare
//! like with like.
//!
//! Each measurement submits one command buffer (a kernel's dispatches, a whole
//! training step or an inference) and waits for the device (wall clock), after
//! one warm-up run; the figure is the median over the repetitions. The
//! `infer-cpu` cases time the folded network's CPU path (the browser's
//! fallback) in this process instead, single-threaded.
//!
//! Every repetition of a case is paired with one run of the ceiling's GEMM
//! just before it, and a case's ratio to the ceiling is the median of the
//! pairs' ratios: on shared machines throughput drifts by tens of percent
//! within a minute, and runs seconds apart drift alike.

use engine::layers::conv2d::{self, Conv2dShape};
use engine::layers::gemm;
use engine::model::{Architecture, Model, ModelSpec, imagenet_classes};
use engine::network::inference::cpu;
use engine::network::resnet::{BottleneckStride, Shortcut};
use engine::network::{FoldedNetwork, InferencePlan, Plan, SpecialisedLayers};
use engine::preprocess::Normalization;
use engine::rng::Rng;
use engine::{Context, Dispatch, Kernels, Tensor, Variant};
use resnet_native::kernel_choice::{self, TrainingStep};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Repetitions per case (fewer for cases whose warm-up run is slow).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Only the convolution and whole-model cases whose name contains this
    /// (e.g. "resnet20", "train", "folded"); the GEMM ceiling always runs.
    #[arg(long)]
    filter: Option<String>,
    /// Also profile the selected training and GPU inference cases:
    /// each dispatch of a step run and timed on its own, the medians summed
    /// per kernel entry point.
    #[arg(long)]
    profile: bool,
}

/// How whole-model GFLOP/s are counted (printed with the figures).
const FLOP_CONVENTION: &str = "model FLOPs per image = 2 per multiply-add of the forward convolutions and \
     classifier; a training step (forward + backward + SGD) counts 3x the forward";

/// Cases whose `--reps` runs would take longer than `time` get fewer
/// repetitions (but at least `min_reps`), to keep the default run short on CPU
/// adapters.
struct Budget {
    time: Duration,
    min_reps: usize,
}

const KERNEL_BUDGET: Budget = Budget {
    time: Duration::from_secs(6),
    min_reps: 3,
};
/// A ResNet-56 training step takes tens of seconds on a CPU adapter: one
/// repetition after the warm-up has to do there.
const MODEL_BUDGET: Budget = Budget {
    time: Duration::from_secs(15),
    min_reps: 1,
};
const GEMM_SIZE: usize = 1024;

#[derive(Serialize)]
struct Adapter {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    variant: String,
    /// How the variant was chosen (measured, cached or set), with the measurement.
    variant_choice: String,
}

#[derive(Serialize)]
struct GemmResult {
    variant: String,
    size: usize,
    median_ms: f64,
    gflops: f64,
    reps: usize,
}

#[derive(Serialize)]
struct ConvResult {
    case: String,
    direction: &'static str,
    batch: usize,
    channels: usize,
    size: usize,
    median_ms: f64,
    gflops: f64,
    /// The GEMM's GFLOP/s in the runs paired with this case's.
    ceiling_gflops: f64,
    /// Median over the pairs.
    ratio_to_ceiling: f64,
    reps: usize,
}

#[derive(Serialize)]
struct ModelResult {
    name: String,
    /// "ResNet-20", ...
    model: String,
    mode: &'static str,
    batch: usize,
    /// Per training step or per inference of the whole batch.
    ms: f64,
    images_per_s: f64,
    gflop_per_image: f64,
    gflops: f64,
    /// The GEMM's GFLOP/s in the runs paired with this case's.
    ceiling_gflops: f64,
    /// Median over the pairs.
    ceiling_ratio: f64,
    reps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
}

/// Where a step's time goes, per dispatch and per kernel entry point.
#[derive(Serialize)]
struct Profile {
    /// The sum of the dispatches' times: the step's time plus one
    /// submission's overhead per dispatch.
    total_ms: f64,
    /// By total time, longest first.
    kernels: Vec<KernelProfile>,
    /// In step order.
    dispatches: Vec<DispatchProfile>,
}

#[derive(Serialize)]
struct KernelProfile {
    entry_point: &'static str,
    ms: f64,
    /// Of [`Profile::total_ms`].
    share: f64,
    count: usize,
    /// For the kernels whose FLOPs are counted (GEMMs and convolutions).
    #[serde(skip_serializing_if = "Option::is_none")]
    gflops: Option<f64>,
}

#[derive(Serialize)]
struct DispatchProfile {
    entry_point: &'static str,
    /// Median over the profiled steps.
    ms: f64,
    gflop: f64,
}

#[derive(Serialize)]
struct Report {
    adapter: Adapter,
    gemm: Vec<GemmResult>,
    gemm_ceiling_gflops: f64,
    conv: Vec<ConvResult>,
    model_flop_convention: &'static str,
    models: Vec<ModelResult>,
}

struct Timing {
    median: Duration,
    reps: usize,
    /// With a paired GEMM: its median time, and the median over the pairs of
    /// GEMM time / case time.
    paired: Option<(Duration, f64)>,
}

impl Timing {
    /// GFLOP/s of `flops` per run, the paired GEMM's GFLOP/s (the ceiling)
    /// and the median ratio of the two.
    fn rates(&self, flops: f64, gemm: &GemmProbe) -> (f64, f64, f64) {
        let gflops = flops / self.median.as_secs_f64() / 1e9;
        let (gemm_median, gemm_over_case) = self.paired.expect("a case's timing is paired with the GEMM");
        let ceiling = gemm.flops / gemm_median.as_secs_f64() / 1e9;
        (gflops, ceiling, gemm_over_case * flops / gemm.flops)
    }
}

/// The dense GEMM whose GFLOP/s are the ceiling, ready to submit.
struct GemmProbe {
    dispatches: Vec<Dispatch>,
    flops: f64,
    variant: Variant,
}

impl GemmProbe {
    fn new(ctx: &Context, kernels: &Kernels) -> anyhow::Result<Self> {
        let n = GEMM_SIZE;
        let mut rng = Rng::new(1);
        let a = random_tensor(ctx, &mut rng, n * n)?;
        let b = random_tensor(ctx, &mut rng, n * n)?;
        let c = Tensor::zeros(ctx.device(), &[n * n])?;
        Ok(Self {
            dispatches: gemm::matmul(ctx.device(), kernels, n, n, n, &a, &b, &c)?,
            flops: 2.0 * (n * n * n) as f64,
            variant: kernels.variant,
        })
    }

    fn run(&self, ctx: &Context) -> anyhow::Result<Duration> {
        submit_and_wait(ctx, || ctx.run(&self.dispatches.iter().collect::<Vec<_>>()))
    }
}

/// Median wall-clock time of `submit` (one command buffer) and waiting for
/// it, each run paired with one of `gemm`.
fn time(ctx: &Context, gemm: &GemmProbe, submit: impl Fn(), reps: usize, budget: &Budget) -> anyhow::Result<Timing> {
    median_time(Some(&|| gemm.run(ctx)), || submit_and_wait(ctx, &submit), reps, budget)
}

/// Wall-clock time of `submit` (one command buffer) and waiting for the device.
fn submit_and_wait(ctx: &Context, submit: impl FnOnce()) -> anyhow::Result<Duration> {
    let start = Instant::now();
    submit();
    ctx.gpu.wait()?;
    Ok(start.elapsed())
}

/// Median wall-clock time of `work` on this thread, each run paired with one of `gemm`.
fn time_cpu<T>(
    ctx: &Context,
    gemm: &GemmProbe,
    work: impl Fn() -> T,
    reps: usize,
    budget: &Budget,
) -> anyhow::Result<Timing> {
    median_time(
        Some(&|| gemm.run(ctx)),
        || {
            let start = Instant::now();
            std::hint::black_box(work());
            Ok(start.elapsed())
        },
        reps,
        budget,
    )
}

/// The median of `run`'s measurements after one warm-up run; with a
/// `baseline` (the ceiling's GEMM), each run follows one of it, and the
/// baseline's time counts towards the budget.
fn median_time(
    baseline: Option<&dyn Fn() -> anyhow::Result<Duration>>,
    run: impl Fn() -> anyhow::Result<Duration>,
    reps: usize,
    budget: &Budget,
) -> anyhow::Result<Timing> {
    let pair = || -> anyhow::Result<(Option<Duration>, Duration)> { Ok((baseline.map(|b| b()).transpose()?, run()?)) };
    let (warm_baseline, warm_run) = pair()?;
    let warm_up = warm_baseline.unwrap_or_default() + warm_run;
    let affordable = (budget.time.as_secs_f64() / warm_up.as_secs_f64().max(1e-9)) as usize;
    let reps = reps.min(affordable.max(budget.min_reps));
    let mut pairs = (0..reps).map(|_| pair()).collect::<anyhow::Result<Vec<_>>>()?;
    let paired = pairs
        .iter()
        .map(|&(g, t)| g.map(|g| (g.as_secs_f64(), t.as_secs_f64())))
        .collect::<Option<Vec<_>>>()
        .map(|pairs| {
            let baseline_median = median(pairs.iter().map(|(g, _)| *g).collect());
            let ratio = median(pairs.iter().map(|(g, t)| g / t).collect());
            (Duration::from_secs_f64(baseline_median), ratio)
        });
    pairs.sort_by_key(|&(_, t)| t);
    Ok(Timing {
        median: pairs[pairs.len() / 2].1,
        reps,
        paired,
    })
}

/// The upper median.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median time of one command buffer of `dispatches`, paired with `gemm`.
fn time_dispatches(ctx: &Context, gemm: &GemmProbe, dispatches: &[Dispatch], reps: usize) -> anyhow::Result<Timing> {
    let refs: Vec<&Dispatch> = dispatches.iter().collect();
    time(ctx, gemm, || ctx.run(&refs), reps, &KERNEL_BUDGET)
}

fn random_tensor(ctx: &Context, rng: &mut Rng, len: usize) -> anyhow::Result<Tensor> {
    Ok(Tensor::from_f64(ctx.device(), &[len], &rng.vec(len, -1.0, 1.0))?)
}

fn selected(filter: Option<&str>, name: &str) -> bool {
    filter.is_none_or(|f| name.contains(f))
}

fn bench_gemm(ctx: &Context, probe: &GemmProbe, reps: usize) -> anyhow::Result<GemmResult> {
    let timing = median_time(None, || probe.run(ctx), reps, &KERNEL_BUDGET)?;
    let ms = timing.median.as_secs_f64() * 1e3;
    Ok(GemmResult {
        variant: format!("{:?}", probe.variant),
        size: GEMM_SIZE,
        median_ms: ms,
        gflops: probe.flops / ms / 1e6,
        reps: timing.reps,
    })
}

struct ConvCase {
    name: String,
    shape: Conv2dShape,
}

/// 3x3 stride-1 convolutions with as many input as output channels.
fn square_conv(network: &str, batch: usize, channels: usize, size: usize) -> ConvCase {
    ConvCase {
        name: format!("{network} b{batch} {channels}ch {size}x{size}"),
        shape: Conv2dShape {
            batch,
            in_channels: channels,
            in_h: size,
            in_w: size,
            out_channels: channels,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
    }
}

fn cases() -> Vec<ConvCase> {
    let mut cases: Vec<ConvCase> = [(16, 32), (32, 16), (64, 8)]
        .into_iter()
        .map(|(c, s)| square_conv("resnet20", 128, c, s))
        .collect();
    for batch in [1, 32] {
        for (c, s) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
            cases.push(square_conv("resnet18", batch, c, s));
        }
    }
    cases
}

fn bench_conv(ctx: &Context, gemm: &GemmProbe, case: &ConvCase, reps: usize) -> anyhow::Result<Vec<ConvResult>> {
    let s = &case.shape;
    let device = ctx.device();
    let kernels = &ctx.kernels;
    let mut rng = Rng::new(2);
    let x = random_tensor(ctx, &mut rng, s.input_len())?;
    let w = random_tensor(ctx, &mut rng, s.weight_len())?;
    let dy = random_tensor(ctx, &mut rng, s.output_len())?;
    let y = Tensor::zeros(device, &[s.output_len()])?;
    let dx = Tensor::zeros(device, &[s.input_len()])?;
    let dw = Tensor::zeros(device, &[s.weight_len()])?;
    let directions = [
        ("forward", conv2d::conv2d_forward(device, kernels, s, &x, &w, &y)?),
        (
            "backward_data",
            conv2d::conv2d_backward_data(device, kernels, s, &dy, &w, &dx)?,
        ),
        (
            "backward_weight",
            conv2d::conv2d_backward_weight(device, kernels, s, &x, &dy, &dw)?,
        ),
    ];
    directions
        .into_iter()
        .map(|(direction, dispatches)| {
            let timing = time_dispatches(ctx, gemm, &dispatches, reps)?;
            let (gflops, ceiling_gflops, ratio_to_ceiling) = timing.rates(s.flops(), gemm);
            Ok(ConvResult {
                case: case.name.clone(),
                direction,
                batch: s.batch,
                channels: s.in_channels,
                size: s.in_h,
                median_ms: timing.median.as_secs_f64() * 1e3,
                gflops,
                ceiling_gflops,
                ratio_to_ceiling,
                reps: timing.reps,
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Forward, loss, backward and SGD with momentum ([`Plan::training`]).
    Train,
    /// Eval-mode forward, layer by layer ([`Plan::inference`]).
    Infer,
    /// Batch norm folded, ReLU and residual fused ([`InferencePlan`]).
    InferFolded,
    /// The same folded network on the CPU ([`cpu::infer`]).
    InferCpu,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Infer => "infer",
            Mode::InferFolded => "infer-folded",
            Mode::InferCpu => "infer-cpu",
        }
    }
}

struct ModelCase {
    name: String,
    spec: ModelSpec,
    mode: Mode,
    batch: usize,
}

impl ModelCase {
    fn new(short: &str, spec: &ModelSpec, mode: Mode, batch: usize) -> Self {
        Self {
            name: format!("{short} {} b{batch}", mode.label()),
            spec: spec.clone(),
            mode,
            batch,
        }
    }

    /// See [`FLOP_CONVENTION`].
    fn flops_per_image(&self) -> anyhow::Result<f64> {
        let forward = self.spec.graph(1)?.forward_flops_per_image();
        Ok(if self.mode == Mode::Train {
            3.0 * forward
        } else {
            forward
        })
    }
}

/// torchvision's layout, 3x224x224 images.
fn imagenet_spec(depth: usize) -> ModelSpec {
    ModelSpec {
        architecture: Architecture::Imagenet {
            depth,
            shortcut: Shortcut::B,
            bottleneck_stride: BottleneckStride::OnConv3x3,
        },
        class_names: imagenet_classes(),
        input: [3, 224, 224],
        normalization: Normalization::imagenet(),
    }
}

/// CIFAR ResNet-20 and -56: training at the paper's batch of 128, inference at
/// batch 1 (latency) and 128 (throughput), unfolded and folded; ImageNet
/// ResNet-18 inference at batch 1. ResNet-20 and -18 also on the CPU path at
/// batch 1 (the browser's fallback classifies one image at a time).
fn model_cases() -> Vec<ModelCase> {
    let mut cases = Vec::new();
    for depth in [20, 56] {
        let (short, spec) = (format!("resnet{depth}"), ModelSpec::cifar10(depth));
        cases.push(ModelCase::new(&short, &spec, Mode::Train, 128));
        for mode in [Mode::Infer, Mode::InferFolded] {
            for batch in [1, 128] {
                cases.push(ModelCase::new(&short, &spec, mode, batch));
            }
        }
        if depth == 20 {
            cases.push(ModelCase::new(&short, &spec, Mode::InferCpu, 1));
        }
    }
    let resnet18 = imagenet_spec(18);
    for mode in [Mode::Infer, Mode::InferFolded, Mode::InferCpu] {
        cases.push(ModelCase::new("resnet18", &resnet18, mode, 1));
    }
    cases
}

/// Profiles `runs` runs of a plan's `dispatches` (at least one run): the
/// median time of each dispatch, and their sums per entry point.
fn profile_plan(ctx: &Context, dispatches: &[&Dispatch], runs: usize) -> anyhow::Result<Profile> {
    let mut runs = (0..runs.max(1))
        .map(|_| engine::kernel::profile(ctx.device(), ctx.queue(), dispatches.iter().copied()))
        .collect::<Result<Vec<_>, _>>()?;
    let dispatches: Vec<DispatchProfile> = (0..runs[0].len())
        .map(|index| {
            let mut times: Vec<Duration> = runs.iter_mut().map(|run| run[index].1).collect();
            times.sort();
            let dispatch = runs[0][index].0;
            DispatchProfile {
                entry_point: dispatch.entry_point(),
                ms: times[times.len() / 2].as_secs_f64() * 1e3,
                gflop: dispatch.flops() / 1e9,
            }
        })
        .collect();
    let total_ms: f64 = dispatches.iter().map(|d| d.ms).sum();
    let mut kernels: Vec<KernelProfile> = Vec::new();
    let mut gflop: Vec<f64> = Vec::new();
    for d in &dispatches {
        let index = match kernels.iter().position(|k| k.entry_point == d.entry_point) {
            Some(index) => index,
            None => {
                kernels.push(KernelProfile {
                    entry_point: d.entry_point,
                    ms: 0.0,
                    share: 0.0,
                    count: 0,
                    gflops: None,
                });
                gflop.push(0.0);
                kernels.len() - 1
            }
        };
        kernels[index].ms += d.ms;
        kernels[index].count += 1;
        gflop[index] += d.gflop;
    }
    for (kernel, gflop) in kernels.iter_mut().zip(gflop) {
        kernel.share = kernel.ms / total_ms;
        kernel.gflops = (gflop > 0.0).then(|| gflop / kernel.ms * 1e3);
    }
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(Profile {
        total_ms,
        kernels,
        dispatches,
    })
}

/// Times a whole step or inference of freshly initialised weights on random
/// images, written once before timing (nothing is read back).
fn bench_model(
    ctx: &Context,
    gemm: &GemmProbe,
    case: &ModelCase,
    reps: usize,
    profiled: bool,
) -> anyhow::Result<ModelResult> {
    let (device, queue, kernels) = (ctx.device(), ctx.queue(), &ctx.kernels);
    // Plans are profiled on request.
    let profile = |dispatches: Vec<&Dispatch>, timing: &Timing| {
        profiled
            .then(|| profile_plan(ctx, &dispatches, timing.reps))
            .transpose()
    };
    // Inference arms start from freshly initialised weights on random images.
    let model_and_images = || -> anyhow::Result<(Model, Vec<f32>)> {
        let (images, _) = kernel_choice::random_batch(&case.spec.graph(case.batch)?);
        Ok((Model::init(case.spec.clone(), 1)?, images))
    };
    let (timing, profile) = match case.mode {
        Mode::Train => {
            let step = TrainingStep::new(&ctx.gpu, kernels, &case.spec, case.batch)?;
            let timing = median_time(Some(&|| gemm.run(ctx)), || step.run(&ctx.gpu), reps, &MODEL_BUDGET)?;
            let profile = profile(step.plan().dispatches().collect(), &timing)?;
            (timing, profile)
        }
        Mode::Infer => {
            let (model, images) = model_and_images()?;
            let graph = case.spec.graph(case.batch)?;
            let plan = Plan::inference(device, kernels, graph, &model.params, &model.running)?;
            plan.write_batch(queue, &images, &[])?;
            let timing = time(ctx, gemm, || plan.step(device, queue), reps, &MODEL_BUDGET)?;
            let profile = profile(plan.dispatches().collect(), &timing)?;
            (timing, profile)
        }
        Mode::InferFolded => {
            let (model, images) = model_and_images()?;
            let plan = InferencePlan::new(device, queue, kernels, &model, case.batch, SpecialisedLayers::All)?;
            plan.write_input(queue, &images)?;
            let timing = time(ctx, gemm, || plan.run(device, queue), reps, &MODEL_BUDGET)?;
            let profile = profile(plan.dispatches().iter().collect(), &timing)?;
            (timing, profile)
        }
        Mode::InferCpu => {
            let (model, images) = model_and_images()?;
            let net = FoldedNetwork::new(&model, case.batch)?;
            let infer = || cpu::infer(&net, &images);
            (time_cpu(ctx, gemm, infer, reps, &MODEL_BUDGET)?, None)
        }
    };
    let seconds = timing.median.as_secs_f64();
    let images_per_s = case.batch as f64 / seconds;
    let flops = case.flops_per_image()?;
    let (gflops, ceiling_gflops, ceiling_ratio) = timing.rates(flops * case.batch as f64, gemm);
    Ok(ModelResult {
        name: case.name.clone(),
        model: case.spec.architecture.name(),
        mode: case.mode.label(),
        batch: case.batch,
        ms: seconds * 1e3,
        images_per_s,
        gflop_per_image: flops / 1e9,
        gflops,
        ceiling_gflops,
        ceiling_ratio,
        reps: timing.reps,
        profile,
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let (ctx, choice) = kernel_choice::open_context()?;
    let info = &ctx.gpu.adapter;
    // Human-readable lines go to stdout, or to stderr when stdout carries JSON.
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "adapter: {} (backend {}, type {}), {choice}",
        info.name, info.backend, info.device_type
    ));
    // Both GEMM variants; the faster one is the ceiling, and runs beside every case.
    let mut gemm = Vec::new();
    let mut probes = Vec::new();
    for variant in [Variant::RegisterTile, Variant::WorkgroupTile] {
        let probe = if variant == ctx.kernels.variant {
            GemmProbe::new(&ctx, &ctx.kernels)?
        } else {
            GemmProbe::new(&ctx, &Kernels::new(ctx.device(), variant))?
        };
        let result = bench_gemm(&ctx, &probe, args.reps)?;
        say(format!(
            "gemm {0}x{0}x{0} {1:<14} {2:9.2} ms {3:7.2} GFLOP/s ({4} reps)",
            result.size, result.variant, result.median_ms, result.gflops, result.reps
        ));
        gemm.push(result);
        probes.push(probe);
    }
    let fastest = if gemm[0].gflops >= gemm[1].gflops { 0 } else { 1 };
    let ceiling = gemm[fastest].gflops;
    let probe = &probes[fastest];
    say(format!(
        "gemm ceiling: {ceiling:.2} GFLOP/s ({:?}); every case below is paired run by run with it",
        probe.variant
    ));
    let filter = args.filter.as_deref();
    let mut conv = Vec::new();
    for case in cases().into_iter().filter(|case| selected(filter, &case.name)) {
        for r in bench_conv(&ctx, probe, &case, args.reps)? {
            say(format!(
                "{:<26} {:<16} {:9.2} ms {:7.2} GFLOP/s  {:5.2} of ceiling {:.2} ({} reps)",
                r.case, r.direction, r.median_ms, r.gflops, r.ratio_to_ceiling, r.ceiling_gflops, r.reps
            ));
            conv.push(r);
        }
    }
    let mut models = Vec::new();
    let model_cases: Vec<_> = model_cases()
        .into_iter()
        .filter(|case| selected(filter, &case.name))
        .collect();
    if !model_cases.is_empty() {
        say(format!("whole models ({FLOP_CONVENTION}):"));
    }
    for case in &model_cases {
        let r = bench_model(&ctx, probe, case, args.reps, args.profile)?;
        say(format!(
            "{:<26} {:9.2} ms {:9.1} img/s {:7.2} GFLOP/s  {:5.2} of ceiling {:.2} ({} reps)",
            r.name, r.ms, r.images_per_s, r.gflops, r.ceiling_ratio, r.ceiling_gflops, r.reps
        ));
        if let Some(p) = &r.profile {
            say(format!(
                "  profile: {} dispatches, each submitted alone, {:.2} ms in all (medians)",
                p.dispatches.len(),
                p.total_ms
            ));
            say(format!(
                "  {:<36} {:>10} {:>6} {:>6} {:>8}",
                "entry point", "ms", "share", "count", "GFLOP/s"
            ));
            for k in &p.kernels {
                let gflops = k.gflops.map_or(String::new(), |g| format!("{g:8.2}"));
                say(format!(
                    "  {:<36} {:10.2} {:5.1}% {:6} {gflops:>8}",
                    k.entry_point,
                    k.ms,
                    k.share * 100.0,
                    k.count
                ));
            }
        }
        models.push(r);
    }
    if args.json {
        let report = Report {
            adapter: Adapter {
                name: info.name.clone(),
                backend: info.backend.clone(),
                device_type: info.device_type.clone(),
                driver: info.driver.clone(),
                variant: format!("{:?}", ctx.kernels.variant),
                variant_choice: choice.to_string(),
            },
            gemm,
            gemm_ceiling_gflops: ceiling,
            conv,
            model_flop_convention: FLOP_CONVENTION,
            models,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A closure returning `ms[0]`, `ms[1]`, ... milliseconds, one per call.
    fn replay(ms: &[u64]) -> impl Fn() -> anyhow::Result<Duration> + '_ {
        let next = Cell::new(0);
        move || {
            next.set(next.get() + 1);
            Ok(Duration::from_millis(ms[next.get() - 1]))
        }
    }

    /// The ratio to the baseline is the median of the pairs' ratios, not the
    /// ratio of the medians, so drift shared by the two sides cancels.
    #[test]
    fn paired_timing_takes_the_median_ratio_of_runs_side_by_side() {
        let budget = Budget {
            time: Duration::from_secs(60),
            min_reps: 1,
        };
        // After the warm-up pair: ratios 0.5, 0.5, 0.9, 0.5, 0.1; the medians
        // of each side alone (20 and 50 ms) would give 0.4.
        let baseline = replay(&[1, 10, 20, 90, 40, 5]);
        let run = replay(&[1, 20, 40, 100, 80, 50]);
        let timing = median_time(Some(&baseline), run, 5, &budget).unwrap();
        assert_eq!((timing.reps, timing.median), (5, Duration::from_millis(50)));
        let (baseline_median, ratio) = timing.paired.unwrap();
        assert_eq!(baseline_median, Duration::from_millis(20));
        assert!((ratio - 0.5).abs() < 1e-12, "ratio {ratio}");
        let unpaired = median_time(None, replay(&[1, 30, 10, 20]), 3, &budget).unwrap();
        assert_eq!((unpaired.median, unpaired.paired), (Duration::from_millis(20), None));
    }

    /// The warm-up pair (baseline included) sets how many runs fit the budget.
    #[test]
    fn paired_timing_cuts_repetitions_to_the_budget() {
        let budget = Budget {
            time: Duration::from_secs(3),
            min_reps: 2,
        };
        let baseline = replay(&[500; 11]);
        let timing = median_time(Some(&baseline), replay(&[500; 11]), 10, &budget).unwrap();
        assert_eq!(timing.reps, 3);
        let slow = replay(&[10_000; 11]);
        assert_eq!(median_time(None, slow, 10, &budget).unwrap().reps, 2);
    }

    fn case(name: &str) -> ModelCase {
        model_cases()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no model case {name}"))
    }

    /// Multiply-adds of a CIFAR ResNet-(6n+2) forward, counted by hand: the
    /// 3->16 stem (27 x 16 x 32^2), 6n 3x3 convolutions of 2,359,296 each
    /// (channels double as maps halve), less half of that for each of the two
    /// stride-2 convolutions, and the 64->10 classifier.
    fn cifar_macs(n: usize) -> f64 {
        (27 * 16 * 1024 + 6 * n * 2_359_296 - 2_359_296 + 640) as f64
    }

    #[test]
    fn model_flops_are_twice_the_forward_macs_and_a_training_step_three_forwards() {
        assert_eq!(cifar_macs(3), 40_551_040.0);
        assert_eq!(cifar_macs(9), 125_485_696.0);
        for (depth, n) in [(20, 3), (56, 9)] {
            let forward = 2.0 * cifar_macs(n);
            for batch in [1, 128] {
                for mode in ["infer", "infer-folded"] {
                    let c = case(&format!("resnet{depth} {mode} b{batch}"));
                    assert_eq!(c.flops_per_image().unwrap(), forward, "{}", c.name);
                }
            }
            let train = case(&format!("resnet{depth} train b128"));
            assert_eq!(train.flops_per_image().unwrap(), 3.0 * forward);
        }
        assert_eq!(
            case("resnet20 infer-cpu b1").flops_per_image().unwrap(),
            2.0 * cifar_macs(3)
        );
        // torchvision's ResNet-18: 1.814 G multiply-adds at 224x224.
        let resnet18 = case("resnet18 infer b1").flops_per_image().unwrap();
        assert!((resnet18 / 2.0 / 1.814e9 - 1.0).abs() < 1e-3, "{resnet18}");
        assert_eq!(case("resnet18 infer-cpu b1").flops_per_image().unwrap(), resnet18);
    }

    #[test]
    fn filter_selects_conv_and_model_cases_by_name() {
        let models = |filter| -> Vec<String> {
            model_cases()
                .into_iter()
                .filter(|c| selected(filter, &c.name))
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(models(None).len(), model_cases().len());
        assert_eq!(
            models(Some("resnet20")),
            [
                "resnet20 train b128",
                "resnet20 infer b1",
                "resnet20 infer b128",
                "resnet20 infer-folded b1",
                "resnet20 infer-folded b128",
                "resnet20 infer-cpu b1",
            ]
        );
        assert_eq!(
            models(Some("infer-cpu")),
            ["resnet20 infer-cpu b1", "resnet18 infer-cpu b1"]
        );
        assert_eq!(models(Some("train")), ["resnet20 train b128", "resnet56 train b128"]);
        assert_eq!(models(Some("resnet56 infer-folded b1")).len(), 2);
        assert!(models(Some("1024ch")).is_empty());
        let convs = cases()
            .into_iter()
            .filter(|c| selected(Some("resnet20"), &c.name))
            .count();
        assert_eq!(convs, 3);
    }
}
