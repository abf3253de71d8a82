//! `train` end to end on a small image-folder data set: a run interrupted and
//! resumed from its checkpoint ends with exactly the weights of an
//! uninterrupted run; metrics, checkpoints and final weights are written.

use clap::Parser;
use engine::model::Model;
use engine::testing::context;
use resnet_native::train::{TrainArgs, run};
use std::path::Path;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

/// Three classes of 8x8 images: mostly red, mostly green, mostly blue.
fn write_dataset(root: &Path) {
    let mut rng = engine::rng::Rng::new(1);
    for split in ["train", "test"] {
        for (class, name) in ["red", "green", "blue"].iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..12 {
                let image = image::RgbImage::from_fn(8, 8, |_, _| {
                    let mut px = [0u8; 3];
                    for (c, v) in px.iter_mut().enumerate() {
                        let base = if c == class { 160.0 } else { 40.0 };
                        *v = (base + rng.range(0.0, 90.0)) as u8;
                    }
                    image::Rgb(px)
                });
                image.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

fn args(data: &Path, out: &Path, iters: u64, resume: bool) -> TrainArgs {
    args_with(data, out, iters, if resume { &["--resume"] } else { &[] })
}

/// `args` with `extra` flags (`--flag=value`), which replace the defaults.
fn args_with(data: &Path, out: &Path, iters: u64, extra: &[&str]) -> TrainArgs {
    let mut argv = vec![
        "train".to_string(),
        "--dataset=folder".into(),
        format!("--data={}", data.display()),
        "--image-size=8".into(),
        "--depth=8".into(),
        "--batch=6".into(),
        "--lr=0.05".into(),
        "--lr-steps=7".into(),
        format!("--iters={iters}"),
        "--checkpoint-every=3".into(),
        "--log-every=1".into(),
        "--eval-every=4".into(),
        "--eval-batch=9".into(),
        format!("--out={}", out.display()),
    ];
    // An extra `--flag=value` replaces the default one.
    let name = |flag: &str| flag.split('=').next().unwrap().to_string();
    argv.retain(|flag| !extra.iter().any(|e| name(e) == name(flag)));
    argv.extend(extra.iter().map(|flag| flag.to_string()));
    Cli::parse_from(argv).args
}

fn train(data: &Path, out: &Path, iters: u64, resume: bool) -> f64 {
    let ctx = context().expect("GPU");
    let result = run(ctx, &args(data, out, iters, resume), &AtomicBool::new(false))
        .unwrap()
        .expect("finished");
    assert_eq!(result.count, 36);
    result.top1()
}

fn weights(out: &Path) -> Model {
    Model::from_safetensors(&std::fs::read(out.join("model.safetensors")).unwrap()).unwrap()
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_run() {
    if context().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let (straight, split) = (tmp.path().join("straight"), tmp.path().join("split"));
    train(&data, &straight, 10, false);
    // Stop after 5 iterations (a checkpoint at 3 and one at the end), then resume to 10;
    // the learning-rate step at 7 and the epoch boundary at 6 fall in the resumed part.
    train(&data, &split, 5, false);
    let accuracy = train(&data, &split, 10, true);
    let (a, b) = (weights(&straight), weights(&split));
    assert_eq!(a.spec, b.spec);
    assert_eq!(a.params, b.params, "parameters differ after resume");
    assert_eq!(a.running, b.running, "running statistics differ after resume");
    assert!(accuracy > 0.5, "colour classes should be learnt, got {accuracy}");

    // Metrics: one line per iteration and the test evaluations, none repeated by the resume.
    let metrics = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    let train_iters: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("train_loss").is_some())
        .map(|v| v["iter"].as_u64().unwrap())
        .collect();
    assert_eq!(train_iters, (1..=10).collect::<Vec<_>>());
    assert!(metrics.contains("\"test_error\""));
    // Only what the run writes: no temporary file left behind.
    let mut files: Vec<String> = std::fs::read_dir(&split)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["checkpoint.safetensors", "metrics.jsonl", "model.safetensors"]);
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_stops() {
    let Some(ctx) = context() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let out = tmp.path().join("run");
    // The flag is already up: the run stops before its first step, saving where it is.
    let stopped = run(ctx, &args(&data, &out, 10, false), &AtomicBool::new(true)).unwrap();
    assert!(stopped.is_none(), "an interrupted run reports no final evaluation");
    assert!(out.join("checkpoint.safetensors").exists());
    assert!(
        !out.join("model.safetensors").exists(),
        "final weights are only written at the end"
    );
    let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let state = Model::read_metadata(&bytes, "train_state").unwrap().unwrap();
    assert!(state.contains("\"iteration\":0"), "{state}");
}

#[test]
fn init_starts_a_new_run_from_the_weights_of_another() {
    let Some(ctx) = context() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_dataset(&data);
    let first = tmp.path().join("first");
    train(&data, &first, 5, false);
    let weights_file = first.join("model.safetensors");
    let init = format!("--init={}", weights_file.display());

    // At learning rate 0 the parameters stay exactly where they start: the
    // file's with --init, random ones without.
    let (tuned, fresh) = (tmp.path().join("tuned"), tmp.path().join("fresh"));
    let stop = AtomicBool::new(false);
    run(ctx, &args_with(&data, &tuned, 2, &["--lr=0", &init]), &stop)
        .unwrap()
        .unwrap();
    run(ctx, &args_with(&data, &fresh, 2, &["--lr=0"]), &stop)
        .unwrap()
        .unwrap();
    let source = weights(&first);
    assert_eq!(weights(&tuned).params, source.params);
    assert_ne!(weights(&fresh).params, source.params);

    // Another architecture is refused, naming both.
    let deeper = tmp.path().join("deeper");
    let err = run(ctx, &args_with(&data, &deeper, 2, &["--depth=14", &init]), &stop).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("--init") && message.contains("depth: 8") && message.contains("depth: 14"),
        "{message}"
    );
}
