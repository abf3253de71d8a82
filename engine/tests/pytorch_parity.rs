//! Parity with PyTorch: the CIFAR ResNet-20 (option A) and torchvision's
//! resnet18 and resnet50 give PyTorch's eval-mode logits, and PyTorch's loss and
//! parameter gradients for one train-mode step, on the GPU.
//!
//! The golden files in `tests/fixtures/pytorch/` come from
//! `tests/pytorch_parity.py` (run by hand with a pip-installed torch; see
//! tests/README.md). They hold no weights: every parameter, running statistic
//! and input is generated here exactly as the script generates it (SplitMix64
//! seeded with the FNV-1a hash of the tensor's name), bit for bit, except a few
//! hundred batch-norm biases that the script moved off their generated values
//! and lists. The goldens are torch's float64 results, so each difference below
//! is this engine's f32 error alone; the fixtures also record torch's own f32
//! error, printed beside ours.
//!
//! `cargo test --release -p engine --test pytorch_parity -- --nocapture` prints
//! the worst differences per model; `PYTORCH_PARITY_VERBOSE=1` adds one line per
//! gradient tensor.

use engine::Context;
use engine::layers::sgd::SgdParams;
use engine::model::{Architecture, Model, ModelSpec};
use engine::network::Plan;
use engine::network::resnet::{BottleneckStride, Shortcut};
use engine::preprocess::Normalization;
use engine::rng::Rng;
use engine::testing::context;
use serde_json::Value;

/// 64-bit FNV-1a of `text`: the seed of the tensor named `text`.
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// `len` values uniform in [lo, hi) from the stream named `key`, rounded to f32
/// (the script's `uniform`).
fn uniform(key: &str, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    let mut rng = Rng::new(fnv1a64(key));
    (0..len).map(|_| rng.range(lo, hi) as f32).collect()
}

/// The range of a tensor, by its name and shape (the script's `tensor_range`).
fn tensor_range(name: &str, shape: &[usize], fc_in: usize, bottleneck: bool) -> (f64, f64) {
    let (module, leaf) = name.rsplit_once('.').expect("dotted name");
    if shape.len() >= 2 {
        let bound = (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
        return (-bound, bound);
    }
    if module == "fc" {
        let bound = 1.0 / (fc_in as f64).sqrt();
        return (-bound, bound);
    }
    match leaf {
        "running_mean" | "bias" => (-0.2, 0.2),
        "running_var" => (0.5, 2.0),
        "weight" => {
            let last_bn = if bottleneck { ".bn3" } else { ".bn2" };
            if module.starts_with("layer") && module.ends_with(last_bn) {
                (0.1, 0.3)
            } else {
                (0.5, 1.5)
            }
        }
        _ => panic!("no range for {name}"),
    }
}

struct Case {
    name: &'static str,
    architecture: Architecture,
}

const RESNET20: Case = Case {
    name: "resnet20",
    architecture: Architecture::Cifar {
        depth: 20,
        shortcut: Shortcut::A,
    },
};

const fn torchvision(name: &'static str, depth: usize) -> Case {
    Case {
        name,
        architecture: Architecture::Imagenet {
            depth,
            shortcut: Shortcut::B,
            bottleneck_stride: BottleneckStride::OnConv3x3,
        },
    }
}

fn fixture(case: &Case) -> Value {
    let path = format!(
        "{}/../tests/fixtures/pytorch/{}.json",
        env!("CARGO_MANIFEST_DIR"),
        case.name
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("an integer") as usize
}

/// The generated model for `image`-pixel inputs.
fn model(case: &Case, fixture: &Value, image: usize) -> Model {
    let classes = usize_of(&fixture["classes"]);
    let spec = ModelSpec {
        architecture: case.architecture,
        class_names: (0..classes).map(|i| i.to_string()).collect(),
        input: [3, image, image],
        normalization: Normalization::imagenet(),
    };
    let graph = spec.graph(1).unwrap();
    let fc_in = graph.params.iter().find(|p| p.name == "fc.weight").unwrap().shape[1];
    let bottleneck = matches!(case.architecture, Architecture::Imagenet { depth, .. } if depth >= 50);
    let generate = |name: &str, shape: &[usize]| {
        let (lo, hi) = tensor_range(name, shape, fc_in, bottleneck);
        uniform(&format!("{}/{name}", case.name), shape.iter().product(), lo, hi)
    };
    let (offsets, len) = graph.param_offsets();
    let mut params = vec![0.0; len];
    for (p, &start) in graph.params.iter().zip(&offsets) {
        params[start..start + p.len()].copy_from_slice(&generate(&p.name, &p.shape));
    }
    // The few batch-norm biases the script moved to keep the train step's ReLU
    // inputs off zero (see its `fit_margins`).
    for (name, changes) in fixture["bias_overrides"].as_object().expect("bias_overrides") {
        let id = graph
            .params
            .iter()
            .position(|p| &p.name == name)
            .expect("an overridden parameter");
        for change in changes.as_array().unwrap() {
            let channel = usize_of(&change[0]);
            assert!(channel < graph.params[id].len(), "{name}[{channel}]");
            params[offsets[id] + channel] = change[1].as_f64().unwrap() as f32;
        }
    }
    let running = graph
        .batch_norms
        .iter()
        .map(|bn| {
            let stat = |which| generate(&format!("{}.{which}", bn.name), &[bn.channels]);
            (stat("running_mean"), stat("running_var"))
        })
        .collect();
    Model { spec, params, running }
}

/// The input batch generated from the stream `key`.
fn input(key: &str, batch: usize, image: usize) -> Vec<f32> {
    uniform(key, batch * 3 * image * image, -1.0, 1.0)
}

/// What a comparison found: the worst differences, and what is out of tolerance.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

/// `|got - want| <= atol + rtol * |want|` element-wise; returns the largest
/// absolute difference and the largest relative one (over |want| >= atol).
fn check(report: &mut Report, what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut max_abs, mut max_rel, mut bad, mut worst) = (0.0f64, 0.0f64, 0, None);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        max_abs = max_abs.max(d);
        if w.abs() >= atol {
            max_rel = max_rel.max(d / w.abs());
        }
        if d.is_nan() || d > atol + rtol * w.abs() {
            bad += 1;
            worst.get_or_insert((i, g, w));
        }
    }
    if let Some((i, g, w)) = worst {
        report.failures.push(format!(
            "{what}: {bad} of {} out of tolerance (atol {atol:.3e}, rtol {rtol:.0e}); first at {i}: got {g}, torch {w}",
            got.len()
        ));
    }
    (max_abs, max_rel)
}

/// Eval-mode logits against torch's.
fn compare_eval(ctx: &Context, case: &Case, fixture: &Value, perturb: Option<&str>) -> Report {
    let (device, queue) = (ctx.device(), ctx.queue());
    let eval = &fixture["eval"];
    let (batch, image) = (usize_of(&eval["batch"]), usize_of(&eval["image"]));
    let mut model = model(case, fixture, image);
    perturb_model(&mut model, perturb);
    let plan = Plan::inference(
        device,
        &ctx.kernels,
        model.spec.graph(batch).unwrap(),
        &model.params,
        &model.running,
    )
    .unwrap();
    plan.write_batch(queue, &input(&format!("{}/eval.input", case.name), batch, image), &[])
        .unwrap();
    plan.step(device, queue);
    let logits: Vec<f64> = plan
        .logits()
        .read_blocking(device, queue)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let want = floats(&eval["logits"]);
    let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
    let mut report = Report::default();
    // f32 through 20-50 layers with sums of up to 4608 products: within 6e-6
    // of the logits' RMS here (torch's f32: 1e-6); 1e-4 leaves room for other
    // adapters' summation orders and still catches a single flipped weight
    // (see `one_flipped_weight_is_caught`).
    let (max_abs, max_rel) = check(&mut report, "eval logits", &logits, &want, 1e-4 * rms, 1e-4);
    report.lines.push(format!(
        "eval logits ({batch}x{image}px): max abs diff {max_abs:.2e} = {:.2e} x RMS (torch f32: {:.2e} x RMS), max rel {max_rel:.2e}",
        max_abs / rms,
        eval["torch_f32_max_err_over_rms"].as_f64().unwrap()
    ));
    report
}

/// One train-mode step: loss, logits where stored, and every parameter gradient.
fn compare_train(ctx: &Context, case: &Case, fixture: &Value, perturb: Option<&str>) -> Report {
    let (device, queue) = (ctx.device(), ctx.queue());
    let train = &fixture["train"];
    let (batch, image) = (usize_of(&train["batch"]), usize_of(&train["image"]));
    let classes = usize_of(&fixture["classes"]);
    let labels: Vec<u32> = train["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as u32)
        .collect();
    // The labels are Rng::below on their own stream: a second generator check.
    let mut rng = Rng::new(fnv1a64(&format!("{}/train.labels", case.name)));
    let ours: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
    assert_eq!(ours, labels, "{}: labels differ from the script's generator", case.name);

    let mut model = model(case, fixture, image);
    perturb_model(&mut model, perturb);
    let graph = model.spec.graph(batch).unwrap();
    // A zero learning rate: the plan's SGD step (which folds in weight decay)
    // only reads the raw gradients, compared below.
    let sgd = SgdParams {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        len: 0,
    };
    let plan = Plan::training(device, &ctx.kernels, graph.clone(), &model.params, sgd).unwrap();
    let key = train["input"].as_str().unwrap();
    plan.write_batch(queue, &input(key, batch, image), &labels).unwrap();
    plan.step(device, queue);
    let stats = pollster::block_on(plan.read_stats(device, queue)).unwrap();
    let grads = plan.param_grads().unwrap().read_blocking(device, queue).unwrap();

    let mut report = Report::default();
    let want_loss = train["loss"].as_f64().unwrap();
    // A mean of log-sum-exps of O(1-10) logits: within 7e-7 here.
    let (loss_diff, _) = check(&mut report, "loss", &[f64::from(stats.loss)], &[want_loss], 1e-5, 1e-5);
    report.lines.push(format!(
        "train loss ({batch}x{image}px): {} vs torch {want_loss:.7}, diff {loss_diff:.2e} (torch f32: {:.2e})",
        stats.loss,
        train["torch_f32_loss_err"].as_f64().unwrap()
    ));
    if let Some(want) = train.get("logits") {
        let want = floats(want);
        let got: Vec<f64> = plan
            .logits()
            .read_blocking(device, queue)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        // ResNet-20's logits are O(0.1-1); within 4e-7 here.
        let (max_abs, max_rel) = check(&mut report, "train logits", &got, &want, 1e-5, 1e-4);
        report.lines.push(format!(
            "train logits: max abs diff {max_abs:.2e}, max rel {max_rel:.2e}"
        ));
    }

    // Gradients, each tensor on its own scale (its RMS: they span orders of
    // magnitude across layers). Elements to 1e-3 x RMS + 1e-3 relative: ours
    // stay within 6e-5 x RMS, torch's f32 within 1.1e-4. Train-mode BN
    // backward subtracts nearly equal sums (dx = gamma/sigma (dy - mean(dy) -
    // xhat mean(dy xhat))), so small elements carry an error of the tensor's
    // scale, hence atol and not rtol alone. This is this tight only because
    // the script keeps every ReLU input and max-pool tie well away from the
    // switch point; without that, one f32 rounding that flips a ReLU moves
    // every earlier gradient by up to ~1 x RMS (see its `fit_margins`).
    let verbose = std::env::var_os("PYTORCH_PARITY_VERBOSE").is_some();
    let (offsets, _) = graph.param_offsets();
    let stored = train["grads"].as_object().unwrap();
    assert_eq!(stored.len(), graph.params.len(), "{}: gradient count", case.name);
    let (mut worst_elem, mut worst_norm, mut worst_sum, mut torch_worst) = (
        (0.0f64, String::new()),
        (0.0f64, String::new()),
        (0.0f64, String::new()),
        0.0f64,
    );
    for (p, start) in graph.params.iter().zip(offsets) {
        let g = &grads[start..start + p.len()];
        let want = stored
            .get(&p.name)
            .unwrap_or_else(|| panic!("{}: no gradient for {}", case.name, p.name));
        assert_eq!(usize_of(&want["len"]), p.len(), "{}: {} length", case.name, p.name);
        let sq_sum = want["sq_sum"].as_f64().unwrap();
        let rms = (sq_sum / p.len() as f64).sqrt();
        torch_worst = torch_worst.max(want["torch_f32_max_err_over_rms"].as_f64().unwrap());
        let (got, expected): (Vec<f64>, Vec<f64>) = match want.get("full") {
            Some(full) => (g.iter().map(|&v| f64::from(v)).collect(), floats(full)),
            None => {
                let index = want["index"].as_array().unwrap().iter().map(usize_of);
                (index.map(|i| f64::from(g[i])).collect(), floats(&want["value"]))
            }
        };
        let (max_abs, _) = check(
            &mut report,
            &format!("grad {}", p.name),
            &got,
            &expected,
            1e-3 * rms,
            1e-3,
        );
        if verbose {
            report.lines.push(format!(
                "  {}: max diff {:.2e} x RMS (torch f32 {:.2e}), RMS {rms:.3e}",
                p.name,
                max_abs / rms,
                want["torch_f32_max_err_over_rms"].as_f64().unwrap()
            ));
        }
        if max_abs / rms > worst_elem.0 {
            worst_elem = (max_abs / rms, p.name.clone());
        }
        // Whole-tensor summaries catch what the sampled elements miss: the L2
        // norm to 1e-4 relative, the sum to 1e-4 of the sum of magnitudes
        // (signed sums of BN-fed convolutions nearly cancel); both stay within
        // ~1e-6 here.
        let norm = g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let (norm_diff, _) = check(
            &mut report,
            &format!("grad {} L2 norm", p.name),
            &[norm],
            &[sq_sum.sqrt()],
            0.0,
            1e-4,
        );
        if norm_diff / sq_sum.sqrt() > worst_norm.0 {
            worst_norm = (norm_diff / sq_sum.sqrt(), p.name.clone());
        }
        let abs_sum = want["abs_sum"].as_f64().unwrap();
        let sum = g.iter().map(|&v| f64::from(v)).sum::<f64>();
        let (sum_diff, _) = check(
            &mut report,
            &format!("grad {} sum", p.name),
            &[sum],
            &[want["sum"].as_f64().unwrap()],
            1e-4 * abs_sum,
            0.0,
        );
        if sum_diff / abs_sum > worst_sum.0 {
            worst_sum = (sum_diff / abs_sum, p.name.clone());
        }
    }
    report.lines.push(format!(
        "gradients ({} tensors): worst element diff {:.2e} x RMS ({}; torch f32 worst {torch_worst:.2e} x RMS), \
         worst L2 norm rel diff {:.2e} ({}), worst sum diff {:.2e} x sum|g| ({})",
        graph.params.len(),
        worst_elem.0,
        worst_elem.1,
        worst_norm.0,
        worst_norm.1,
        worst_sum.0,
        worst_sum.1
    ));
    report
}

/// Negates the first element of the named parameter: a one-element bug, for
/// the negative test.
fn perturb_model(model: &mut Model, perturb: Option<&str>) {
    let Some(name) = perturb else { return };
    let graph = model.spec.graph(1).unwrap();
    let (offsets, _) = graph.param_offsets();
    let id = graph.params.iter().position(|p| p.name == name).unwrap();
    model.params[offsets[id]] *= -1.0;
}

/// The generator must reproduce the script's values exactly.
fn check_generator(case: &Case, fixture: &Value) {
    let model = model(case, fixture, 32);
    let graph = model.spec.graph(1).unwrap();
    let expected = &fixture["generator_check"];
    let got = &model.params[graph.param_offsets().0[0]..][..4];
    assert_eq!(graph.params[0].name, "conv1.weight");
    let want: Vec<f32> = floats(&expected["conv1.weight"]).iter().map(|&v| v as f32).collect();
    assert_eq!(
        got,
        want.as_slice(),
        "{}: conv1.weight differs from the script's",
        case.name
    );
    let want: Vec<f32> = floats(&expected["bn1.running_var"]).iter().map(|&v| v as f32).collect();
    assert_eq!(graph.batch_norms[0].name, "bn1");
    assert_eq!(
        &model.running[0].1[..4],
        want.as_slice(),
        "{}: bn1.running_var differs from the script's",
        case.name
    );
}

fn assert_parity(case: &Case) {
    let Some(ctx) = context() else { return };
    let fixture = fixture(case);
    check_generator(case, &fixture);
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for report in [
        compare_eval(ctx, case, &fixture, None),
        compare_train(ctx, case, &fixture, None),
    ] {
        lines.extend(report.lines);
        failures.extend(report.failures);
    }
    println!(
        "{} vs PyTorch {} (float64); train-step ReLU inputs >= {:.1e} x RMS from 0:",
        case.name,
        fixture["torch"].as_str().unwrap(),
        fixture["train"]["relu_margin"].as_f64().unwrap()
    );
    for line in &lines {
        println!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "{} differs from PyTorch:\n  {}",
        case.name,
        failures.join("\n  ")
    );
}

#[test]
fn cifar_resnet20_option_a_matches_pytorch() {
    assert_parity(&RESNET20);
}

#[test]
fn torchvision_resnet18_matches_pytorch() {
    assert_parity(&torchvision("resnet18", 18));
}

#[test]
fn torchvision_resnet50_matches_pytorch() {
    assert_parity(&torchvision("resnet50", 50));
}

/// The comparison can fail: one of ResNet-20's 270k parameters with its sign
/// flipped (the first of 4608 weights of the stride-2 convolution opening
/// stage 2; it moves PyTorch's logits by 1.5e-2 x RMS) shows in the eval
/// logits and in the gradients.
#[test]
fn one_flipped_weight_is_caught() {
    let Some(ctx) = context() else { return };
    let fixture = fixture(&RESNET20);
    let perturb = Some("layer2.0.conv1.weight");
    let eval = compare_eval(ctx, &RESNET20, &fixture, perturb);
    assert!(!eval.failures.is_empty(), "eval missed the flipped weight");
    let train = compare_train(ctx, &RESNET20, &fixture, perturb);
    assert!(!train.failures.is_empty(), "training missed the flipped weight");
    println!(
        "one flipped weight: {} eval and {} train checks failed, e.g.\n  {}\n  {}",
        eval.failures.len(),
        train.failures.len(),
        eval.failures[0],
        train.failures[0]
    );
}
