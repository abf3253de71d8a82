//! `resnet-native train`: SGD on the GPU with the paper's recipe by default,
//! atomic checkpoints, exact resume, periodic test evaluation and metrics.

use crate::data::{self, Augmentation, BatchLoader, Dataset, Position, Split, TrainOptions};
use crate::evaluate::{EvalResult, evaluate};
use anyhow::{Context as _, bail};
use clap::ValueEnum;
use engine::Context;
use engine::layers::sgd::SgdParams;
use engine::model::{Architecture, Model, ModelSpec};
use engine::network::Plan;
use engine::network::resnet::{BottleneckStride, Shortcut};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum DatasetKind {
    Cifar10,
    FashionMnist,
    /// A folder with `train/` and `test/`, each with one subfolder per class.
    Folder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum ArchKind {
    /// CIFAR ResNet-(6n+2): 3 stages of 16/32/64 filters.
    Cifar,
    /// ImageNet ResNet-18/34/50/101/152.
    Imagenet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum ShortcutKind {
    A,
    B,
    C,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum NormalizationKind {
    /// Subtract the training set's per-pixel mean (the paper).
    PerPixel,
    /// Standardise with the training set's per-channel mean and std.
    PerChannel,
}

/// Everything that defines a run; stored in its checkpoints.
#[derive(clap::Args, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Data set to train on.
    #[arg(long, value_enum, default_value_t = DatasetKind::Cifar10)]
    pub dataset: DatasetKind,
    /// Where the data set is [default: cifar10: data/cifar-10-batches-bin, else
    /// ../shared/data/cifar-10-batches-bin; fashion-mnist: /usr/share/datasets/fashion-mnist].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Image size for `--dataset folder` (height = width).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Network family.
    #[arg(long, value_enum, default_value_t = ArchKind::Cifar)]
    pub arch: ArchKind,
    /// Depth: 6n+2 for CIFAR nets (20, 32, 44, 56, 110, 1202), or 18/34/50/101/152.
    #[arg(long, default_value_t = 20)]
    pub depth: usize,
    /// Plain network: the same layers without shortcuts.
    #[arg(long)]
    pub plain: bool,
    /// Shortcut option where shapes change (A: zero-padding identity, B: projection, C: all projections).
    #[arg(long, value_enum, default_value_t = ShortcutKind::A)]
    pub shortcut: ShortcutKind,
    /// Images per SGD step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
    /// `--lr-steps`.
    #[arg(skip = RunLengths::LR_STEPS.to_vec())]
    pub lr_steps: Vec<u64>,
    #[arg(long, default_value_t = 0.1)]
    pub lr_decay: f32,
    /// Iterations at lr/10 before the schedule starts (the paper uses 400 for ResNet-110).
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Total iterations (`--iters`).
    #[arg(skip = RunLengths::ITERS)]
    pub iters: u64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f32,
    /// Input normalisation, computed from the training set and stored with the weights.
    #[arg(long, value_enum, default_value_t = NormalizationKind::PerPixel)]
    pub normalization: NormalizationKind,
    /// Turn off the paper's augmentation (pad 4, random crop, random flip).
    #[arg(long)]
    pub no_augment: bool,
    /// Seed of initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `--eval-every`.
    #[arg(skip = RunLengths::EVAL_EVERY)]
    pub eval_every: u64,
    /// `--checkpoint-every`.
    #[arg(skip = RunLengths::CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    /// `--log-every`.
    #[arg(skip = RunLengths::LOG_EVERY)]
    pub log_every: u64,
    /// Batch size of test-set evaluation.
    #[arg(long, default_value_t = 500)]
    pub eval_batch: usize,
}

/// How long a run goes, where its learning rate steps down and how often it
/// reports: the part of a [`TrainConfig`] that `--resume` may change (to
/// extend a run). A flag left out keeps the checkpoint's value on `--resume`
/// and takes the default below on a new run.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunLengths {
    /// Total iterations [default: 64000].
    #[arg(long)]
    pub iters: Option<u64>,
    /// Iterations at which the learning rate is multiplied by --lr-decay
    /// [default: 32000,48000]. On --resume, steps may move only where the run
    /// has not been yet.
    #[arg(long, value_delimiter = ',')]
    pub lr_steps: Option<Vec<u64>>,
    /// Evaluate on the test set every N iterations (0: only at the end) [default: 2000].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Write a checkpoint every N iterations [default: 500].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Read back loss and accuracy every N iterations (a GPU sync) [default: 10].
    #[arg(long)]
    pub log_every: Option<u64>,
}

impl RunLengths {
    pub const ITERS: u64 = 64_000;
    pub const LR_STEPS: [u64; 2] = [32_000, 48_000];
    pub const EVAL_EVERY: u64 = 2000;
    pub const CHECKPOINT_EVERY: u64 = 500;
    pub const LOG_EVERY: u64 = 10;

    /// `config`, which has run `done` iterations, with the flags given here
    /// replacing its values; an error if new --lr-steps would change the
    /// learning rate of an iteration already run.
    pub fn apply(&self, config: TrainConfig, done: u64) -> anyhow::Result<TrainConfig> {
        let lr_steps = self.lr_steps.clone().unwrap_or_else(|| config.lr_steps.clone());
        let past = |steps: &[u64]| {
            let mut past: Vec<u64> = steps.iter().copied().filter(|&s| s < done).collect();
            past.sort_unstable();
            past
        };
        if past(&lr_steps) != past(&config.lr_steps) {
            bail!(
                "--lr-steps {lr_steps:?} would change the learning rate of iterations already run \
                 (the run is at iteration {done}; its steps were {:?})",
                config.lr_steps
            );
        }
        Ok(TrainConfig {
            iters: self.iters.unwrap_or(config.iters),
            lr_steps,
            eval_every: self.eval_every.unwrap_or(config.eval_every),
            checkpoint_every: self.checkpoint_every.unwrap_or(config.checkpoint_every),
            log_every: self.log_every.unwrap_or(config.log_every),
            ..config
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The run's configuration; on `--resume` the checkpoint's is used instead.
    #[command(flatten)]
    pub config: TrainConfig,
    #[command(flatten)]
    pub lengths: RunLengths,
    /// Run folder: checkpoint.safetensors, metrics.jsonl, model.safetensors.
    #[arg(long, default_value = "runs/resnet20")]
    pub out: PathBuf,
    /// Continue from <out>/checkpoint.safetensors at its iteration, with its
    /// momenta, schedule and data order. The saved configuration is used; only
    /// --iters, --lr-steps (where the run has not been yet), --eval-every,
    /// --checkpoint-every and --log-every may be changed (left out, they keep
    /// the checkpoint's values).
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights and batch-norm statistics of WEIGHTS (e.g. an
    /// earlier run's model.safetensors) instead of random ones: a new run, with
    /// fresh momenta and its own schedule (fine-tuning, or a restart at a
    /// higher learning rate). Its architecture, input size and classes must be
    /// the configuration's and the data set's; its normalisation is kept.
    #[arg(long, value_name = "WEIGHTS", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
}

/// What a checkpoint records besides the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainState {
    config: TrainConfig,
    iteration: u64,
}

const STATE_KEY: &str = "train_state";
const CHECKPOINT: &str = "checkpoint.safetensors";

impl TrainConfig {
    /// The learning rate of iteration `iter` (0-based).
    pub fn learning_rate(&self, iter: u64) -> f32 {
        if iter < self.warmup {
            return self.lr / 10.0;
        }
        let steps = self.lr_steps.iter().filter(|&&s| iter >= s).count();
        self.lr * self.lr_decay.powi(steps as i32)
    }

    fn sgd(&self, iter: u64) -> SgdParams {
        SgdParams {
            lr: self.learning_rate(iter),
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            len: 0,
        }
    }

    fn architecture(&self) -> Architecture {
        let shortcut = match (self.plain, self.shortcut) {
            (true, _) => Shortcut::None,
            (false, ShortcutKind::A) => Shortcut::A,
            (false, ShortcutKind::B) => Shortcut::B,
            (false, ShortcutKind::C) => Shortcut::C,
        };
        match self.arch {
            ArchKind::Cifar => Architecture::Cifar {
                depth: self.depth,
                shortcut,
            },
            ArchKind::Imagenet => Architecture::Imagenet {
                depth: self.depth,
                shortcut,
                bottleneck_stride: BottleneckStride::OnConv3x3,
            },
        }
    }

    /// Training and test sets.
    pub fn load_data(&self) -> anyhow::Result<(Dataset, Dataset)> {
        let dir = self.data_dir()?;
        let load = |split| -> anyhow::Result<Dataset> {
            Ok(match self.dataset {
                DatasetKind::Cifar10 => data::cifar10(&dir, split)?,
                DatasetKind::FashionMnist => data::fashion_mnist(&dir, split)?,
                DatasetKind::Folder => {
                    let sub = dir.join(if split == Split::Train { "train" } else { "test" });
                    data::image_folder(&sub, (self.image_size, self.image_size))?
                }
            })
        };
        Ok((load(Split::Train)?, load(Split::Test)?))
    }

    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data {
            return Ok(dir.clone());
        }
        let candidates: &[&str] = match self.dataset {
            DatasetKind::Cifar10 => &["data/cifar-10-batches-bin", "../shared/data/cifar-10-batches-bin"],
            DatasetKind::FashionMnist => &[data::FASHION_MNIST_SYSTEM_DIR],
            DatasetKind::Folder => bail!("--dataset folder needs --data DIR (with train/ and test/ inside)"),
        };
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .with_context(|| {
                format!(
                    "no data found at {}; download CIFAR-10 with `resnet-native download` or pass --data",
                    candidates.join(" or ")
                )
            })
    }
}

/// Trains as configured; returns the final test evaluation.
pub fn run(ctx: &Context, args: &TrainArgs, interrupted: &AtomicBool) -> anyhow::Result<Option<EvalResult>> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let checkpoint_path = args.out.join(CHECKPOINT);
    let (config, start, restored) = if args.resume {
        let bytes = std::fs::read(&checkpoint_path)
            .with_context(|| format!("--resume: reading {}", checkpoint_path.display()))?;
        let state: TrainState = serde_json::from_str(
            &Model::read_metadata(&bytes, STATE_KEY)?.context("the checkpoint has no training state")?,
        )?;
        let velocity = Model::read_extra(&bytes, "velocity")?.context("the checkpoint has no momenta")?;
        (
            args.lengths.apply(state.config, state.iteration)?,
            state.iteration,
            Some((Model::from_safetensors(&bytes)?, velocity)),
        )
    } else {
        (args.lengths.apply(args.config.clone(), 0)?, 0, None)
    };
    if config.batch == 0 || config.log_every == 0 || config.checkpoint_every == 0 {
        bail!("--batch, --log-every and --checkpoint-every must be positive");
    }

    let (train_set, test_set) = config.load_data()?;
    let (train_set, test_set) = (Arc::new(train_set), Arc::new(test_set));
    let model = match restored {
        Some((model, _)) if model.spec.class_names != train_set.class_names => {
            bail!("the checkpoint's classes differ from the data set's")
        }
        Some((ref model, _)) => model.clone(),
        None => {
            let normalization = match config.normalization {
                NormalizationKind::PerPixel => train_set.per_pixel_mean(),
                NormalizationKind::PerChannel => train_set.per_channel_normalization(),
            };
            let spec = ModelSpec {
                architecture: config.architecture(),
                class_names: train_set.class_names.clone(),
                input: [train_set.channels, train_set.height, train_set.width],
                normalization,
            };
            match &args.init {
                Some(path) => initial_weights(path, &spec)?,
                None => Model::init(spec, config.seed)?,
            }
        }
    };
    let (device, queue) = (ctx.device(), ctx.queue());
    let graph = model.spec.graph(config.batch)?;
    let flops_per_image = 3.0 * graph.forward_flops_per_image();
    let plan = Plan::training(device, &ctx.kernels, graph, &model.params, config.sgd(start))?;
    // Running statistics of a resumed or initialised model; momenta of a resumed one.
    let velocity = restored.as_ref().map(|(_, velocity)| velocity.as_slice());
    plan.write_weights(queue, &model.params, &model.running, velocity)?;
    let eval_batch = config.eval_batch.min(test_set.len).max(1);
    let eval_plan = Plan::inference(
        device,
        &ctx.kernels,
        model.spec.graph(eval_batch)?,
        &model.params,
        &model.running,
    )?;

    let per_epoch = (train_set.len / config.batch) as u64;
    if per_epoch == 0 {
        bail!("--batch {} exceeds the {} training images", config.batch, train_set.len);
    }
    // Starts exactly where the checkpoint's run was: same epoch order, same augmentation.
    let mut loader = BatchLoader::train(
        train_set.clone(),
        TrainOptions {
            batch_size: config.batch,
            normalization: model.spec.normalization.clone(),
            augmentation: (!config.no_augment).then_some(Augmentation::PAPER),
            seed: config.seed,
            start: Position {
                epoch: start / per_epoch,
                batch: (start % per_epoch) as usize,
            },
        },
    );

    let metrics_path = args.out.join("metrics.jsonl");
    let mut metrics = Metrics::open(&metrics_path, start)?;
    let checkpoint = |iteration: u64| -> anyhow::Result<()> {
        let (params, running) = pollster::block_on(plan.read_weights(device, queue))?;
        let velocity = plan.velocity().expect("training plan").read_blocking(device, queue)?;
        let state = serde_json::to_string(&TrainState {
            config: config.clone(),
            iteration,
        })?;
        let model = Model {
            spec: model.spec.clone(),
            params,
            running,
        };
        let bytes = model.to_safetensors_with(&[("velocity", &velocity)], &[(STATE_KEY, &state)])?;
        write_atomically(&checkpoint_path, &bytes)
    };
    let test = |iteration: u64, metrics: &mut Metrics| -> anyhow::Result<EvalResult> {
        let mut encoder = device.create_command_encoder(&Default::default());
        plan.copy_weights_to(&eval_plan, &mut encoder);
        queue.submit([encoder.finish()]);
        let result = evaluate(ctx, &eval_plan, test_set.clone(), &model.spec.normalization)?;
        metrics.write(&serde_json::json!({
            "iter": iteration,
            "test_loss": result.loss,
            "test_error": 1.0 - result.top1(),
            "test_top5_error": 1.0 - result.top5(),
        }))?;
        Ok(result)
    };

    println!(
        "training {} on {:?} ({} images, {} batches per epoch) on {}",
        model.spec.architecture.name(),
        config.dataset,
        train_set.len,
        per_epoch,
        ctx.gpu.adapter
    );
    let bar = ProgressBar::new(config.iters).with_position(start);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} it  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    let mut lr = config.learning_rate(start);
    let mut window = Instant::now();
    let mut window_start = start;
    let mut iteration = start;
    while iteration < config.iters {
        if interrupted.load(Ordering::SeqCst) {
            checkpoint(iteration)?;
            bar.abandon_with_message(format!(
                "interrupted; checkpoint at iteration {iteration}, continue with --resume"
            ));
            return Ok(None);
        }
        let next_lr = config.learning_rate(iteration);
        if next_lr != lr {
            lr = next_lr;
            plan.set_sgd(queue, config.sgd(iteration));
        }
        let batch = loader.next().context("the batch loader stopped")?;
        plan.write_batch(queue, &batch.images, &batch.labels)?;
        plan.step(device, queue);
        iteration += 1;
        bar.set_position(iteration);

        if iteration % config.log_every == 0 {
            let stats = pollster::block_on(plan.read_stats(device, queue))?;
            let error = 1.0 - stats.correct as f64 / config.batch as f64;
            let images_per_s = (iteration - window_start) as f64 * config.batch as f64 / window.elapsed().as_secs_f64();
            (window, window_start) = (Instant::now(), iteration);
            bar.set_message(format!(
                "loss {:.3}  err {:5.1}%  {:.0} img/s ({:.1} GFLOP/s)  lr {lr}",
                stats.loss,
                100.0 * error,
                images_per_s,
                images_per_s * flops_per_image / 1e9
            ));
            if !stats.loss.is_finite() {
                checkpoint(iteration)?;
                bail!("the loss diverged (NaN/inf) at iteration {iteration}; try a lower --lr or --warmup");
            }
            metrics.write(&serde_json::json!({
                "iter": iteration,
                "epoch": iteration as f64 / per_epoch as f64,
                "lr": (f64::from(lr) * 1e9).round() / 1e9,
                "train_loss": stats.loss,
                "train_error": error,
                "images_per_s": images_per_s,
            }))?;
        }
        if iteration % config.checkpoint_every == 0 {
            checkpoint(iteration)?;
        }
        if config.eval_every > 0 && iteration % config.eval_every == 0 && iteration < config.iters {
            let result = test(iteration, &mut metrics)?;
            bar.println(format!(
                "iteration {iteration}: test error {:.2}% (top-5 {:.2}%), loss {:.4}",
                100.0 * (1.0 - result.top1()),
                100.0 * (1.0 - result.top5()),
                result.loss
            ));
        }
    }
    bar.finish();
    checkpoint(iteration)?;
    let result = test(iteration, &mut metrics)?;
    let (params, running) = pollster::block_on(plan.read_weights(device, queue))?;
    let final_model = Model {
        spec: model.spec.clone(),
        params,
        running,
    };
    write_atomically(&args.out.join("model.safetensors"), &final_model.to_safetensors()?)?;
    Ok(Some(result))
}

/// The model in `path` for `--init`, which must be a `spec` network (its
/// normalisation aside: the weights were trained with theirs).
fn initial_weights(path: &Path, spec: &ModelSpec) -> anyhow::Result<Model> {
    let bytes = std::fs::read(path).with_context(|| format!("--init: reading {}", path.display()))?;
    let model = Model::load(&bytes).with_context(|| format!("--init: loading {}", path.display()))?;
    let (have, want) = (&model.spec, spec);
    if (&have.architecture, have.input, &have.class_names) != (&want.architecture, want.input, &want.class_names) {
        bail!(
            "--init: {} is a {:?} for {:?} inputs and classes {:?}; this run trains a {:?} for {:?} inputs and classes {:?}",
            path.display(),
            have.architecture,
            have.input,
            have.class_names,
            want.architecture,
            want.input,
            want.class_names
        );
    }
    Ok(model)
}

/// Writes `path` through a temporary file (uniquely named, beside it) and a
/// rename, so a crash never leaves a half-written file behind and concurrent
/// writers never mix their bytes.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// metrics.jsonl, one JSON object per line; a resumed run first drops what
/// the interrupted run logged after its checkpoint.
struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    fn open(path: &Path, resume_from: u64) -> anyhow::Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) if resume_from > 0 => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["iter"].as_u64())
                        .is_some_and(|i| i <= resume_from)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            _ => String::new(),
        };
        write_atomically(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self { file })
    }

    fn write(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.file, "{value}")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    impl Cli {
        /// The configuration of a new run with these flags.
        fn config<const N: usize>(argv: [&str; N]) -> TrainConfig {
            let args = Cli::parse_from(argv).args;
            args.lengths.apply(args.config, 0).unwrap()
        }
    }

    #[test]
    fn defaults_are_the_papers_cifar10_recipe() {
        let c = Cli::config(["train"]);
        assert_eq!((c.depth, c.batch, c.iters), (20, 128, 64_000));
        assert_eq!(c.lr_steps, vec![32_000, 48_000]);
        assert_eq!((c.lr, c.momentum, c.weight_decay), (0.1, 0.9, 1e-4));
        assert_eq!(
            c.architecture(),
            Architecture::Cifar {
                depth: 20,
                shortcut: Shortcut::A
            }
        );
        assert!(!c.no_augment);
    }

    #[test]
    fn learning_rate_follows_warmup_and_steps() {
        let c = Cli::config(["train", "--warmup", "400", "--lr-steps", "1000,2000"]);
        let lr = |i| c.learning_rate(i);
        assert_eq!(lr(0), 0.01);
        assert_eq!(lr(399), 0.01);
        assert_eq!(lr(400), 0.1);
        assert!((lr(1000) - 0.01).abs() < 1e-9 && (lr(2500) - 0.001).abs() < 1e-9);
    }

    /// The settings a run resumed at iteration `done` with `flags` uses.
    fn resumed(saved: &TrainConfig, done: u64, flags: &[&str]) -> anyhow::Result<TrainConfig> {
        let argv = ["train", "--resume"].iter().chain(flags);
        Cli::parse_from(argv).args.lengths.apply(saved.clone(), done)
    }

    #[test]
    fn resume_keeps_the_checkpoints_settings_unless_a_flag_changes_them() {
        let saved = Cli::config([
            "train",
            "--iters=3600",
            "--lr-steps=2200,3100",
            "--eval-every=400",
            "--checkpoint-every=50",
            "--log-every=5",
        ]);
        assert_eq!(resumed(&saved, 2850, &[]).unwrap(), saved);
        let longer = resumed(&saved, 2850, &["--iters=4800", "--lr-steps=2200,4100"]).unwrap();
        assert_eq!((longer.iters, longer.lr_steps.as_slice()), (4800, &[2200, 4100][..]));
        assert_eq!(
            (longer.eval_every, longer.checkpoint_every, longer.log_every),
            (400, 50, 5)
        );
    }

    #[test]
    fn resume_refuses_lr_steps_that_rewrite_the_past() {
        let saved = Cli::config(["train", "--lr-steps=2200,3100"]);
        for steps in ["--lr-steps=2000,3100", "--lr-steps=3100", "--lr-steps=1000,2200,3100"] {
            let err = resumed(&saved, 2850, &[steps]).unwrap_err().to_string();
            assert!(err.contains("iterations already run"), "{steps}: {err}");
        }
        // A checkpoint at iteration 3100 has run iterations 0..3099: the step at
        // 3100 may still move; one iteration later it may not.
        assert!(resumed(&saved, 3100, &["--lr-steps=2200,4000"]).is_ok());
        assert!(resumed(&saved, 3101, &["--lr-steps=2200,4000"]).is_err());
        assert!(resumed(&saved, 2850, &["--lr-steps=2200,2850"]).is_ok());
    }
}
