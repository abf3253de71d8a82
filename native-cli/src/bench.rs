//! `resnet-native bench`: convolution throughput against the adapter's f32 GEMM
//! ceiling.
//!
//! Each measurement records its dispatches into one command buffer, submits it
//! and waits for the device (wall clock), after one warm-up run; the figure is
//! the median over the repetitions.

use anyhow::Context as _;
use engine::layers::conv2d::{self, Conv2dShape};
use engine::layers::gemm;
use engine::rng::Rng;
use engine::{Context, Dispatch, Kernels, Tensor, Variant};
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
    /// Only the convolution cases whose name contains this (e.g. "resnet20").
    #[arg(long)]
    filter: Option<String>,
}

/// Cases whose `--reps` runs would take longer than this get fewer repetitions
/// (but at least 3), to keep the default run short on CPU adapters.
const TIME_PER_CASE: Duration = Duration::from_secs(6);
const GEMM_SIZE: usize = 1024;

#[derive(Serialize)]
struct Adapter {
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    variant: String,
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
    ratio_to_ceiling: f64,
    reps: usize,
}

#[derive(Serialize)]
struct Report {
    adapter: Adapter,
    gemm: Vec<GemmResult>,
    gemm_ceiling_gflops: f64,
    conv: Vec<ConvResult>,
}

struct Timing {
    median: Duration,
    reps: usize,
}

/// Median wall-clock time of submitting `dispatches` and waiting for them.
fn time(ctx: &Context, dispatches: &[Dispatch], reps: usize) -> anyhow::Result<Timing> {
    let refs: Vec<&Dispatch> = dispatches.iter().collect();
    let run = || -> anyhow::Result<Duration> {
        let start = Instant::now();
        ctx.run(&refs);
        ctx.gpu.wait()?;
        Ok(start.elapsed())
    };
    let warm_up = run()?;
    let affordable = (TIME_PER_CASE.as_secs_f64() / warm_up.as_secs_f64().max(1e-9)) as usize;
    let reps = reps.min(affordable.max(3));
    let mut times = (0..reps).map(|_| run()).collect::<anyhow::Result<Vec<_>>>()?;
    times.sort();
    Ok(Timing {
        median: times[times.len() / 2],
        reps,
    })
}

fn random_tensor(ctx: &Context, rng: &mut Rng, len: usize) -> anyhow::Result<Tensor> {
    Ok(Tensor::from_f64(ctx.device(), &[len], &rng.vec(len, -1.0, 1.0))?)
}

fn bench_gemm(ctx: &Context, kernels: &Kernels, reps: usize) -> anyhow::Result<GemmResult> {
    let n = GEMM_SIZE;
    let mut rng = Rng::new(1);
    let a = random_tensor(ctx, &mut rng, n * n)?;
    let b = random_tensor(ctx, &mut rng, n * n)?;
    let c = Tensor::zeros(ctx.device(), &[n * n])?;
    let dispatches = gemm::matmul(ctx.device(), kernels, n, n, n, &a, &b, &c)?;
    let timing = time(ctx, &dispatches, reps)?;
    let ms = timing.median.as_secs_f64() * 1e3;
    Ok(GemmResult {
        variant: format!("{:?}", kernels.variant),
        size: n,
        median_ms: ms,
        gflops: 2.0 * (n * n * n) as f64 / ms / 1e6,
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

fn bench_conv(ctx: &Context, case: &ConvCase, reps: usize, ceiling: f64) -> anyhow::Result<Vec<ConvResult>> {
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
            let timing = time(ctx, &dispatches, reps)?;
            let ms = timing.median.as_secs_f64() * 1e3;
            let gflops = s.flops() / ms / 1e6;
            Ok(ConvResult {
                case: case.name.clone(),
                direction,
                batch: s.batch,
                channels: s.in_channels,
                size: s.in_h,
                median_ms: ms,
                gflops,
                ratio_to_ceiling: gflops / ceiling,
                reps: timing.reps,
            })
        })
        .collect()
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let ctx = pollster::block_on(Context::create()).context("opening the GPU")?;
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
        "adapter: {} (backend {}, type {}), kernel variant {:?}",
        info.name, info.backend, info.device_type, ctx.kernels.variant
    ));
    let mut gemm = Vec::new();
    for variant in [Variant::RegisterTile, Variant::WorkgroupTile] {
        let result = if variant == ctx.kernels.variant {
            bench_gemm(&ctx, &ctx.kernels, args.reps)?
        } else {
            bench_gemm(&ctx, &Kernels::new(ctx.device(), variant), args.reps)?
        };
        say(format!(
            "gemm {0}x{0}x{0} {1:<14} {2:9.2} ms {3:7.2} GFLOP/s ({4} reps)",
            result.size, result.variant, result.median_ms, result.gflops, result.reps
        ));
        gemm.push(result);
    }
    let ceiling = gemm.iter().map(|g| g.gflops).fold(0.0, f64::max);
    say(format!("gemm ceiling: {ceiling:.2} GFLOP/s"));
    let mut conv = Vec::new();
    let selected = cases()
        .into_iter()
        .filter(|case| args.filter.as_ref().is_none_or(|f| case.name.contains(f.as_str())));
    for case in selected {
        for r in bench_conv(&ctx, &case, args.reps, ceiling)? {
            say(format!(
                "{:<26} {:<16} {:9.2} ms {:7.2} GFLOP/s  {:5.2} of ceiling ({} reps)",
                r.case, r.direction, r.median_ms, r.gflops, r.ratio_to_ceiling, r.reps
            ));
            conv.push(r);
        }
    }
    if args.json {
        let report = Report {
            adapter: Adapter {
                name: info.name.clone(),
                backend: info.backend.clone(),
                device_type: info.device_type.clone(),
                driver: info.driver.clone(),
                variant: format!("{:?}", ctx.kernels.variant),
            },
            gemm,
            gemm_ceiling_gflops: ceiling,
            conv,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
