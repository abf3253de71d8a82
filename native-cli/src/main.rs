//! `resnet-native`: train, evaluate and benchmark ResNets on any GPU.

mod bench;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use engine::classify;
use engine::model::{Architecture, COMMON_RENAMES, Model, ModelSpec};
use engine::network::graph::Op;
use engine::network::resnet::{BottleneckStride, Shortcut};
use engine::network::{InferencePlan, Plan, SpecialisedLayers};
use engine::preprocess::Normalization;
use resnet_native::data::{self, Split};
use resnet_native::evaluate::evaluate;
use resnet_native::kernel_choice;
use resnet_native::serve::{ServeArgs, Server};
use resnet_native::train::{self, DatasetKind, TrainArgs, write_atomically};
use resnet_native::{npy, plot};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "resnet-native",
    version,
    about = "Deep residual networks (He et al. 2015) on any GPU through WebGPU (wgpu): Vulkan, Metal, DX12",
    long_about = "Deep residual networks (He et al. 2015) on any GPU through WebGPU (wgpu): Vulkan, Metal, DX12.\n\n\
        Start with `resnet-native train` (the paper's CIFAR-10 ResNet-20 recipe), then `eval` and `classify` \
        with the weights it writes. WGPU_BACKEND=vulkan|metal|dx12 and WGPU_ADAPTER_NAME pick the GPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (defaults: the paper's CIFAR-10 ResNet-20 recipe).
    Train(TrainArgs),
    /// Evaluate weights on a test set: top-1, top-5, loss and per-class accuracy.
    Eval(EvalArgs),
    /// Classify images: top-5 classes with probabilities.
    Classify(ClassifyArgs),
    /// Run a raw NCHW float32 batch (.npy) through the network in eval mode and
    /// save the logits (.npy): parity checks against other frameworks.
    Forward(ForwardArgs),
    /// Convert other safetensors ResNets (torchvision, `module.`/`linear.` names) to this project's format.
    Import(ImportArgs),
    /// Download CIFAR-10 (binary version) and verify its checksums.
    Download(DownloadArgs),
    /// Plot training (dashed) and test (bold) error of runs against iterations, like the paper's Figure 6.
    Plot(PlotArgs),
    /// Show the GPU adapter, and a model's summary with --weights.
    Info(InfoArgs),
    /// Time conv2d at ResNet shapes and whole ResNets (training, inference) against the f32 GEMM ceiling.
    ///
    /// Measured in one process: the f32 GEMM ceiling (the best GEMM variant), conv2d forward and backward
    /// at ResNet shapes, and whole models (CIFAR ResNet-20/56 training steps at batch 128, inference at
    /// batch 1 and 128 unfolded and with batch norm folded, ImageNet ResNet-18 inference at batch 1).
    /// Whole-model GFLOP/s are effective: model FLOPs per image x images/s, where an image's FLOPs are
    /// 2 per multiply-add of the forward convolutions and classifier, and a training step (forward,
    /// backward, SGD) counts 3x the forward. Each figure is a median over --reps runs after a warm-up.
    Bench(bench::BenchArgs),
    /// Serve the drop-an-image page (WebGPU in the browser) on 127.0.0.1.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Weights written by `train` or `import`.
    #[arg(long)]
    weights: PathBuf,
    /// Data set folder (CIFAR-10 binary batches, Fashion-MNIST IDX files, or an image folder).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = DatasetKind::Cifar10)]
    dataset: DatasetKind,
    /// Override the stored per-channel mean (R,G,B on the [0,1] scale).
    #[arg(long, value_delimiter = ',', requires = "std")]
    mean: Option<Vec<f32>>,
    /// Override the stored per-channel std.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ClassifyArgs {
    #[arg(long)]
    weights: PathBuf,
    /// Image files (any size; resized to the network's input).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ForwardArgs {
    #[arg(long)]
    weights: PathBuf,
    /// Input batch [N, C, H, W], float32, already normalised.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the logits [N, classes].
    #[arg(long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct ImportArgs {
    input: PathBuf,
    output: PathBuf,
    /// cifar (ResNet-6n+2) or imagenet (ResNet-18..152). Without --arch and
    /// --depth the architecture is recognised from the tensors (and a file of
    /// this project's is re-saved without its training state).
    #[arg(long, value_enum)]
    arch: Option<train::ArchKind>,
    /// Depth [default: 20 for cifar, 18 for imagenet].
    #[arg(long)]
    depth: Option<usize>,
    /// Per-channel mean (R,G,B) [default: ImageNet's].
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// A text file with one class name per line [default: CIFAR-10's, or ImageNet-1k's].
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Input image size [default: 32 for cifar, 224 for imagenet].
    #[arg(long)]
    image_size: Option<usize>,
}

#[derive(clap::Args)]
struct DownloadArgs {
    /// Folder to put cifar-10-batches-bin in.
    #[arg(long, default_value = "data")]
    dest: PathBuf,
    #[arg(long, default_value = data::CIFAR10_URL)]
    url: String,
}

#[derive(clap::Args)]
struct PlotArgs {
    /// Run folders (with metrics.jsonl) or metrics files.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// PNG to write.
    #[arg(long, default_value = "error.png")]
    out: PathBuf,
    /// Also write an SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    #[arg(long, default_value = "CIFAR-10")]
    title: String,
    /// Running mean over this many logged training points.
    #[arg(long, default_value_t = 20)]
    smooth: usize,
}

#[derive(clap::Args)]
struct InfoArgs {
    #[arg(long)]
    weights: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => {
            let ctx = context()?;
            let interrupted = Arc::new(AtomicBool::new(false));
            let flag = interrupted.clone();
            ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
            if let Some(result) = train::run(&ctx, &args, &interrupted)? {
                println!(
                    "test error {:.2}% (top-5 {:.2}%) on {} images; weights in {}",
                    100.0 * (1.0 - result.top1()),
                    100.0 * (1.0 - result.top5()),
                    result.count,
                    args.out.join("model.safetensors").display()
                );
            }
            Ok(())
        }
        Command::Eval(args) => eval(&args),
        Command::Serve(args) => {
            let server = Server::start(&args)?;
            println!("serving {} at {} (Ctrl-C stops)", args.weights.display(), server.url());
            std::thread::park();
            Ok(())
        }
        Command::Classify(args) => classify(&args),
        Command::Import(args) => import(&args),
        Command::Forward(args) => forward(&args),
        Command::Plot(args) => {
            let runs = args
                .runs
                .iter()
                .map(|r| plot::read_run(r, args.smooth))
                .collect::<anyhow::Result<Vec<_>>>()?;
            plot::render(&runs, &args.title, &args.out, args.svg.as_ref())?;
            println!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Download(args) => {
            let dir = data::download_cifar10(&args.dest, &args.url)?;
            println!("CIFAR-10 is in {}", dir.display());
            Ok(())
        }
        Command::Info(args) => {
            let (ctx, choice) = kernel_choice::open_context()?;
            println!("adapter: {}", ctx.gpu.adapter);
            println!("kernels: {choice}");
            if let Some(path) = args.weights {
                let model = load_model(&path)?;
                let graph = model.spec.graph(1)?;
                println!("model: {}", model.spec.architecture.name());
                println!("{:<16} {:<22} {:>10}", "layer", "output", "params");
                for op in &graph.ops {
                    let (kind, params) = match op {
                        Op::Conv2d { w, .. } => ("conv2d", graph.params[*w].len()),
                        Op::BatchNorm { gamma, .. } => ("batch_norm", 2 * graph.params[*gamma].len()),
                        Op::Linear { w, b, .. } => ("linear", graph.params[*w].len() + graph.params[*b].len()),
                        Op::Relu { .. } => ("relu", 0),
                        Op::Add { .. } => ("add", 0),
                        Op::ShortcutA { .. } => ("shortcut_a", 0),
                        Op::MaxPool { .. } => ("max_pool", 0),
                        Op::GlobalAvgPool { .. } => ("global_avg_pool", 0),
                    };
                    let shape = format!("{:?}", &graph.tensors[op.output()][1..]);
                    println!("{kind:<16} {shape:<22} {params:>10}");
                }
                println!(
                    "input: {:?}, classes: {}",
                    model.spec.input,
                    model.spec.class_names.len()
                );
                println!("parameters: {}", graph.param_count());
                println!("forward: {:.3} GFLOP per image", graph.forward_flops_per_image() / 1e9);
                match &model.spec.normalization {
                    Normalization::PerChannel { mean, std } => println!("normalisation: mean {mean:?}, std {std:?}"),
                    Normalization::PerPixelMean { mean } => {
                        println!("normalisation: per-pixel mean ({} values)", mean.len())
                    }
                }
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(&args),
    }
}

fn context() -> anyhow::Result<engine::Context> {
    Ok(kernel_choice::open_context()?.0)
}

fn load_model(path: &PathBuf) -> anyhow::Result<Model> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Model::load(&bytes).with_context(|| format!("loading {}", path.display()))
}

fn eval(args: &EvalArgs) -> anyhow::Result<()> {
    let mut model = load_model(&args.weights)?;
    if let (Some(mean), Some(std)) = (&args.mean, &args.std) {
        if mean.len() != model.spec.input[0] || std.len() != model.spec.input[0] {
            bail!("--mean and --std need {} values", model.spec.input[0]);
        }
        model.spec.normalization = Normalization::PerChannel {
            mean: mean.clone(),
            std: std.clone(),
        };
    }
    let dataset = match args.dataset {
        DatasetKind::Cifar10 => data::cifar10(&args.data, Split::Test)?,
        DatasetKind::FashionMnist => data::fashion_mnist(&args.data, Split::Test)?,
        DatasetKind::Folder => data::image_folder(&args.data, (model.spec.input[1], model.spec.input[2]))?,
    };
    if [dataset.channels, dataset.height, dataset.width] != model.spec.input {
        bail!(
            "the data's images are {}x{}x{} but the model takes {:?}",
            dataset.channels,
            dataset.height,
            dataset.width,
            model.spec.input
        );
    }
    let ctx = context()?;
    let batch = args.batch.clamp(1, dataset.len.max(1));
    let plan = Plan::inference(
        ctx.device(),
        &ctx.kernels,
        model.spec.graph(batch)?,
        &model.params,
        &model.running,
    )?;
    let result = evaluate(&ctx, &plan, Arc::new(dataset), &model.spec.normalization)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "count": result.count, "top1": result.top1(), "top5": result.top5(), "loss": result.loss,
                "per_class_accuracy": model.spec.class_names.iter().zip(result.per_class_accuracy())
                    .map(|(c, a)| (c.clone(), serde_json::json!(a))).collect::<serde_json::Map<_, _>>(),
                "confusion": result.confusion, "adapter": ctx.gpu.adapter.to_string(),
            })
        );
    } else {
        println!(
            "{} on {} images ({})",
            model.spec.architecture.name(),
            result.count,
            ctx.gpu.adapter
        );
        println!(
            "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
            100.0 * result.top1(),
            100.0 * result.top5(),
            result.loss
        );
        println!("{:>14}  accuracy", "class");
        for (name, acc) in model.spec.class_names.iter().zip(result.per_class_accuracy()) {
            println!("{name:>14}  {:.2}%", 100.0 * acc);
        }
    }
    Ok(())
}

fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    let model = load_model(&args.weights)?;
    let ctx = context()?;
    // The browser's path: batch norm folded, epilogues fused.
    let plan = InferencePlan::new(
        ctx.device(),
        ctx.queue(),
        &ctx.kernels,
        &model,
        1,
        SpecialisedLayers::All,
    )?;
    let mut results = Vec::new();
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let input = classify::decode(&bytes)
            .and_then(|rgb| classify::model_input(&rgb, &model.spec))
            .with_context(|| format!("classifying {}", path.display()))?;
        let logits = pollster::block_on(plan.logits(ctx.device(), ctx.queue(), &input))?;
        results.push((path, classify::top_k(&classify::softmax(&logits), 5)));
    }
    if args.json {
        let json: Vec<_> = results
            .iter()
            .map(|(path, ranked)| {
                serde_json::json!({
                    "image": path.display().to_string(),
                    "top5": ranked.iter().map(|&(c, p)| serde_json::json!({"class": model.spec.class_names[c], "index": c, "probability": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for (path, ranked) in results {
            println!("{}", path.display());
            for (c, p) in ranked {
                println!("  {:>6.2}%  {}", 100.0 * p, model.spec.class_names[c]);
            }
        }
    }
    Ok(())
}

fn forward(args: &ForwardArgs) -> anyhow::Result<()> {
    let model = load_model(&args.weights)?;
    let bytes = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let (shape, values) = npy::read_f32(&bytes).with_context(|| format!("reading {}", args.input.display()))?;
    if shape.len() != 4 || shape[1..] != model.spec.input {
        bail!("the input is {shape:?}; the model takes [N, {:?}]", model.spec.input);
    }
    let ctx = context()?;
    let plan = Plan::inference(
        ctx.device(),
        &ctx.kernels,
        model.spec.graph(shape[0])?,
        &model.params,
        &model.running,
    )?;
    plan.write_batch(ctx.queue(), &values, &[])?;
    plan.step(ctx.device(), ctx.queue());
    let logits = plan.logits().read_blocking(ctx.device(), ctx.queue())?;
    write_atomically(&args.output, &npy::write_f32(&plan.logits().shape, &logits))?;
    println!("wrote {} {:?}", args.output.display(), plan.logits().shape);
    Ok(())
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let explicit = args.arch.is_some() || args.depth.is_some();
    let overrides = args.mean.is_some() || args.std.is_some() || args.classes.is_some() || args.image_size.is_some();
    if !explicit && !overrides {
        let model = Model::load(&bytes).with_context(|| format!("importing {}", args.input.display()))?;
        return write_model(&args.output, &model);
    }
    let arch = args.arch.unwrap_or(train::ArchKind::Cifar);
    let imagenet = arch == train::ArchKind::Imagenet;
    let depth = args.depth.unwrap_or(if imagenet { 18 } else { 20 });
    let class_names: Vec<String> = match &args.classes {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None if imagenet => engine::model::imagenet_classes(),
        None => data::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let normalization = match (&args.mean, &args.std) {
        (Some(mean), Some(std)) if mean.len() == 3 && std.len() == 3 => Normalization::PerChannel {
            mean: mean.clone(),
            std: std.clone(),
        },
        (None, None) => Normalization::imagenet(),
        _ => bail!("give both --mean and --std, with 3 values each"),
    };
    let architecture = if imagenet {
        Architecture::Imagenet {
            depth,
            shortcut: Shortcut::B,
            bottleneck_stride: BottleneckStride::OnConv3x3,
        }
    } else {
        Architecture::Cifar {
            depth,
            shortcut: Shortcut::A,
        }
    };
    let size = args.image_size.unwrap_or(if imagenet { 224 } else { 32 });
    let spec = ModelSpec {
        architecture,
        class_names,
        input: [3, size, size],
        normalization,
    };
    let model = Model::from_tensors(spec, &bytes, COMMON_RENAMES)
        .with_context(|| format!("importing {}", args.input.display()))?;
    write_model(&args.output, &model)
}

fn write_model(path: &std::path::Path, model: &Model) -> anyhow::Result<()> {
    write_atomically(path, &model.to_safetensors()?)?;
    println!(
        "wrote {} ({}, {} classes)",
        path.display(),
        model.spec.architecture.name(),
        model.spec.class_names.len()
    );
    Ok(())
}
