//! Whole-network tests: the GPU plan against the CPU reference, and training.

use super::cpu::{self, RunningStats};
use super::graph::{GradStep, Op};
use super::inference::{self, FoldedNetwork, FoldedOp, InferencePlan, SpecialisedLayers};
use super::plan::{ReluBackwardFusion, batch_norm_fusions, relu_backward_fusions};
use super::resnet::{BottleneckStride, Shortcut, imagenet_resnet};
use super::{Plan, cifar_resnet};
use crate::layers::sgd::SgdParams;
use crate::model::{Architecture, Model, ModelSpec};
use crate::preprocess::Normalization;
use crate::rng::Rng;
use crate::testing::{assert_close, context};
use crate::{EngineError, Kernels, Variant};
use std::collections::BTreeSet;

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// 3x32x32 images in [-1, 1] and labels, deterministic.
fn batch(rng: &mut Rng, n: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    batch_of(rng, n, 3 * 32 * 32, classes)
}

fn batch_of(rng: &mut Rng, n: usize, image_len: usize, classes: usize) -> (Vec<f32>, Vec<u32>) {
    let images = rng
        .vec(n * image_len, -1.0, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let labels = (0..n).map(|_| rng.below(classes) as u32).collect();
    (images, labels)
}

const SGD: SgdParams = SgdParams {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 1e-4,
    len: 0,
};

#[test]
fn resnet8_training_steps_on_gpu_match_the_cpu_reference() {
    assert_training_matches_reference(cifar_resnet(4, 1, true, 10));
}

/// Option-B projections, the 7x7 stem, max pool and the layout torchvision's
/// weights need, on a small input so the f64 reference stays quick. (ResNet-50
/// at this size is left out: its last stage normalises 8 values per channel,
/// where f32-vs-f64 ReLU mask flips alone exceed any fair gradient tolerance.)
#[test]
fn imagenet_resnet18_training_steps_match_the_cpu_reference() {
    let graph = imagenet_resnet(2, 18, Shortcut::B, BottleneckStride::OnConv3x3, 10, 64).unwrap();
    assert_training_matches_reference(graph);
}

/// Two SGD steps of `graph` on the GPU against the CPU reference: loss,
/// logits, every gradient, the updated parameters and the running statistics.
fn assert_training_matches_reference(graph: super::Graph) {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let image_len: usize = graph.tensors[graph.input][1..].iter().product();
    let params = graph.init_params(7);
    let plan = Plan::training(device, &ctx.kernels, graph.clone(), &params, SGD).unwrap();

    let mut ref_params = to_f64(&params);
    let mut ref_velocity = vec![0.0; ref_params.len()];
    let mut ref_running = RunningStats::new(&graph);
    let ref_sgd = SgdParams {
        len: ref_params.len() as u32,
        ..SGD
    };
    let mut rng = Rng::new(3);
    // Two steps, so that momentum and the updated running statistics count.
    for step in 0..2 {
        let (images, labels) = batch_of(&mut rng, graph.batch, image_len, graph.classes);
        plan.write_batch(queue, &images, &labels).unwrap();
        plan.step(device, queue);
        let before = ref_params.clone();
        let reference = cpu::train_step(
            &graph,
            &mut ref_params,
            &mut ref_velocity,
            &mut ref_running,
            &to_f64(&images),
            &labels,
            &ref_sgd,
        );
        let stats = pollster::block_on(plan.read_stats(device, queue)).unwrap();
        // f32 sums of a few thousand terms through 8 layers: ~1e-5 relative.
        assert_close(
            &format!("step {step} loss"),
            &[stats.loss],
            &[reference.loss],
            1e-5,
            1e-4,
        );
        assert_close(
            &format!("step {step} logits"),
            &plan.logits().read_blocking(device, queue).unwrap(),
            &reference.logits,
            1e-4,
            1e-3,
        );
        // Gradients are compared relative to the largest one: BN backward
        // subtracts nearly equal sums, so tiny entries carry absolute error.
        let gmax = reference.grads.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        let grads = plan.param_grads().unwrap().read_blocking(device, queue).unwrap();
        assert_close(
            &format!("step {step} gradients"),
            &grads,
            &reference.grads,
            2e-3 * gmax,
            1e-2,
        );
        // The update itself is exact arithmetic on nearly equal inputs.
        let updated = plan.params.read_blocking(device, queue).unwrap();
        let moved = updated
            .iter()
            .zip(&before)
            .filter(|(a, b)| (**a as f64 - **b).abs() > 0.0)
            .count();
        assert!(moved > ref_params.len() / 2, "SGD left most parameters unchanged");
        assert_close(
            &format!("step {step} parameters"),
            &updated,
            &ref_params,
            2e-3 * gmax * 0.1,
            1e-4,
        );
        for (i, ((mean, var), (ref_mean, ref_var))) in plan.running.iter().zip(&ref_running.0).enumerate() {
            assert_close(
                &format!("bn {i} running mean"),
                &mean.read_blocking(device, queue).unwrap(),
                ref_mean,
                1e-5,
                1e-3,
            );
            assert_close(
                &format!("bn {i} running var"),
                &var.read_blocking(device, queue).unwrap(),
                ref_var,
                1e-5,
                1e-3,
            );
        }
    }
}

#[test]
fn resnet8_overfits_a_fixed_batch_of_16_on_gpu() {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let graph = cifar_resnet(16, 1, true, 10);
    let plan = Plan::training(device, &ctx.kernels, graph.clone(), &graph.init_params(11), SGD).unwrap();
    let (images, labels) = batch(&mut Rng::new(5), 16, 10);
    plan.write_batch(queue, &images, &labels).unwrap();
    let mut losses = Vec::new();
    for _ in 0..50 {
        plan.step(device, queue);
        losses.push(pollster::block_on(plan.read_stats(device, queue)).unwrap().loss);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last.is_finite() && last < 0.1 * first,
        "loss went from {first} to {last}: {losses:?}"
    );
}

/// The profile times every dispatch of a training step once, in step order,
/// labelled with a compute entry point of the shaders; the FLOPs it counts
/// are the convolutions': each forward and backward-weight, and each
/// backward-data but the stem's (the images need no gradient).
#[test]
fn training_profile_times_every_dispatch_labelled_by_its_entry_point() {
    let Some(ctx) = context() else { return };
    let graph = cifar_resnet(2, 1, true, 10);
    let plan = Plan::training(ctx.device(), &ctx.kernels, graph.clone(), &graph.init_params(1), SGD).unwrap();
    let profile = plan.profile(ctx.device(), ctx.queue()).unwrap();
    let dispatches: Vec<_> = plan.dispatches().collect();
    assert_eq!(profile.len(), dispatches.len());
    assert!(profile.iter().zip(&dispatches).all(|((p, _), d)| std::ptr::eq(*p, *d)));

    let shaders_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders");
    let sources: String = std::fs::read_dir(shaders_dir)
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    for (dispatch, _) in &profile {
        let entry_point = dispatch.entry_point();
        let declared = sources
            .split("@compute")
            .skip(1)
            .any(|declaration| declaration.contains(&format!("fn {entry_point}(")));
        assert!(declared, "{entry_point} is no compute entry point of shaders/");
    }

    let convs: Vec<_> = graph
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Conv2d { shape, .. } => Some(shape.flops()),
            _ => None,
        })
        .collect();
    let expected = 3.0 * convs.iter().sum::<f64>() - convs[0];
    let counted: f64 = profile.iter().map(|(d, _)| d.flops()).sum();
    assert!((counted / expected - 1.0).abs() < 1e-12, "{counted} vs {expected}");
}

/// ResNet-20's stem and every block's first batch norm take their ReLU into
/// their normalising pass, and every block's second batch norm the residual
/// add and the ReLU after it: no ReLU or add runs on its own.
#[test]
fn resnet20_batch_norms_fuse_every_relu_and_residual_add() {
    let graph = cifar_resnet(2, 3, true, 10);
    let fusions: Vec<_> = batch_norm_fusions(&graph).into_iter().flatten().collect();
    assert_eq!(fusions.len(), 19);
    assert_eq!(fusions.iter().filter(|f| f.residual.is_none() && f.relu).count(), 10);
    assert_eq!(fusions.iter().filter(|f| f.residual.is_some() && f.relu).count(), 9);
    let absorbed: usize = fusions.iter().map(|f| f.absorbed.len()).sum();
    let relus_and_adds = graph
        .ops
        .iter()
        .filter(|op| matches!(op, Op::Relu { .. } | Op::Add { .. }))
        .count();
    assert_eq!(absorbed, relus_and_adds);
}

/// ResNet-20's backward runs every ReLU's backward (and every gradient sum
/// of a block's input) in a convolution's backward-data epilogue, except the
/// last block's, whose gradient comes from the pooling.
#[test]
fn resnet20_backward_fuses_every_relu_but_the_last_and_every_sum_into_convolutions() {
    let graph = cifar_resnet(2, 3, true, 10);
    let steps = graph.backward_schedule().steps;
    let fusions = relu_backward_fusions(&graph, &steps);
    let count = |f: &dyn Fn(&GradStep, &Option<ReluBackwardFusion>) -> bool| {
        steps.iter().zip(&fusions).filter(|(s, fusion)| f(s, fusion)).count()
    };
    let is_relu = |s: &GradStep| matches!(s, GradStep::Op { op, .. } if matches!(graph.ops[*op], Op::Relu { .. }));
    let absorbed = |f: &Option<ReluBackwardFusion>| *f == Some(ReluBackwardFusion::Absorbed);
    assert_eq!(count(&|s, _| is_relu(s)), 19);
    assert_eq!(count(&|s, f| is_relu(s) && absorbed(f)), 18);
    assert_eq!(count(&|s, _| matches!(s, GradStep::Accumulate { .. })), 9);
    assert_eq!(
        count(&|s, f| matches!(s, GradStep::Accumulate { .. }) && absorbed(f)),
        9
    );
    let into_conv = |residual: bool| {
        count(&|_, f| matches!(f, Some(ReluBackwardFusion::IntoConv { residual: r, .. }) if r.is_some() == residual))
    };
    assert_eq!((into_conv(false), into_conv(true)), (9, 9));
}

/// On the register tile, ResNet-20's training step takes every batch norm's
/// statistics from the forward convolution before it, and the backward
/// reduce of the 16 batch norms whose output gradient a stride-1
/// backward-data writes from that convolution; the other 3 (the last
/// block's, whose gradient comes from the pooling, and the two fed by the
/// stride-2 convolutions' phases) reduce their tensors themselves.
#[test]
fn resnet20_training_on_the_register_tile_takes_batch_norm_sums_from_convolutions() {
    let Some(ctx) = context() else { return };
    let kernels = Kernels::new(ctx.device(), Variant::RegisterTile);
    let graph = cifar_resnet(2, 3, true, 10);
    let plan = Plan::training(ctx.device(), &kernels, graph.clone(), &graph.init_params(1), SGD).unwrap();
    let count = |entry_point: &str| plan.dispatches().filter(|d| d.entry_point() == entry_point).count();
    assert_eq!(count("batch_norm_statistics_partials"), 19);
    assert_eq!(count("batch_norm_statistics") + count("batch_norm_statistics_vec4"), 0);
    assert_eq!(count("batch_norm_backward_reduce_partials"), 16);
    assert_eq!(
        count("batch_norm_backward_reduce") + count("batch_norm_backward_reduce_vec4"),
        3
    );
}

#[test]
fn inference_plan_matches_the_cpu_reference_in_eval_mode() {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let graph = cifar_resnet(3, 1, true, 10);
    let params = graph.init_params(9);
    // Non-trivial running statistics, as after training.
    let mut rng = Rng::new(4);
    let running: Vec<(Vec<f32>, Vec<f32>)> = graph
        .batch_norms
        .iter()
        .map(|bn| {
            let mean = rng.vec(bn.channels, -0.5, 0.5).into_iter().map(|v| v as f32).collect();
            let var = rng.vec(bn.channels, 0.5, 2.0).into_iter().map(|v| v as f32).collect();
            (mean, var)
        })
        .collect();
    let plan = Plan::inference(device, &ctx.kernels, graph.clone(), &params, &running).unwrap();
    let (images, _) = batch(&mut rng, 3, 10);
    plan.write_batch(queue, &images, &[]).unwrap();
    plan.step(device, queue);
    let ref_running = RunningStats(running.iter().map(|(m, v)| (to_f64(m), to_f64(v))).collect());
    let want = cpu::infer(&graph, &to_f64(&params), &ref_running, &to_f64(&images));
    assert_close(
        "eval logits",
        &plan.logits().read_blocking(device, queue).unwrap(),
        &want,
        1e-4,
        1e-3,
    );
}

fn spec(architecture: Architecture, input: [usize; 3]) -> ModelSpec {
    ModelSpec {
        architecture,
        class_names: (0..10).map(|i| format!("class {i}")).collect(),
        input,
        normalization: Normalization::imagenet(),
    }
}

fn cifar_spec(depth: usize) -> ModelSpec {
    let architecture = Architecture::Cifar {
        depth,
        shortcut: Shortcut::A,
    };
    spec(architecture, [3, 32, 32])
}

/// ResNet-18 with option-B projections at 64 px: the 7x7 stem, max pool and
/// 1x1 stride-2 shortcuts, with final maps of 2x2.
fn imagenet18_spec() -> ModelSpec {
    let architecture = Architecture::Imagenet {
        depth: 18,
        shortcut: Shortcut::B,
        bottleneck_stride: BottleneckStride::OnConv3x3,
    };
    spec(architecture, [3, 64, 64])
}

/// A model of `spec` with random weights and batch-norm state as after
/// training: gamma in [0.5, 1.5], beta ~ N(0, 0.2), running mean ~ N(0, 0.5),
/// running variance in [0.5, 2], so folding has something to fold.
fn trained_like(spec: ModelSpec, seed: u64) -> Model {
    let mut model = Model::init(spec, seed).unwrap();
    let graph = model.spec.graph(1).unwrap();
    let (offsets, _) = graph.param_offsets();
    let mut rng = Rng::new(seed);
    for op in &graph.ops {
        if let Op::BatchNorm { gamma, beta, shape, .. } = *op {
            for c in 0..shape.channels {
                model.params[offsets[gamma] + c] = rng.range(0.5, 1.5) as f32;
                model.params[offsets[beta] + c] = (0.2 * rng.normal()) as f32;
            }
        }
    }
    for (mean, var) in &mut model.running {
        mean.iter_mut().for_each(|m| *m = (0.5 * rng.normal()) as f32);
        var.iter_mut().for_each(|v| *v = rng.range(0.5, 2.0) as f32);
    }
    model
}

/// Eval-mode logits of the unfolded graph: the f64 reference.
fn unfolded_logits(model: &Model, batch: usize, images: &[f32]) -> Vec<f64> {
    let graph = model.spec.graph(batch).unwrap();
    let running = RunningStats(model.running.iter().map(|(m, v)| (to_f64(m), to_f64(v))).collect());
    cpu::infer(&graph, &to_f64(&model.params), &running, &to_f64(images))
}

fn images_for(model: &Model, batch: usize) -> Vec<f32> {
    let image_len = model.spec.input.iter().product();
    batch_of(&mut Rng::new(8), batch, image_len, 1).0
}

/// Folded inference against the unfolded reference: folding rounds each
/// weight once more in f32 (relative 6e-8), far below the f32 accumulation
/// error of the convolutions themselves, which the plan's tests bound by
/// 1e-4 + 1e-3 relative; the absolute part scales with the largest logit
/// since random weights with random statistics do not keep activations at
/// unit scale (largest logits here: 4 to 39; observed errors stay under 1%
/// of this tolerance). A missing bias, ReLU, residual or tap moves logits by
/// several percent of that scale.
fn assert_logits_match(what: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    assert_close(what, got, want, 1e-4 * scale, 1e-3);
}

/// `specialised`: per [`SpecialisedLayers`], the Winograd GEMMs and 3-tap
/// GEMMs that the compact kernels run (the others run none).
fn assert_inference_plan_matches_reference(
    spec: ModelSpec,
    batch: usize,
    specialised: [(SpecialisedLayers, &[&str]); 2],
) {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let model = trained_like(spec, 5);
    let images = images_for(&model, batch);
    let want = unfolded_logits(&model, batch, &images);
    // Every variant as the device gets it (the compact one with subgroup
    // weight loads where the device has subgroups), and the compact one
    // without subgroups too where it has them.
    let mut kernel_sets: Vec<Kernels> = Variant::ALL.iter().map(|&v| Kernels::new(device, v)).collect();
    if device.features().contains(wgpu::Features::SUBGROUP) {
        kernel_sets.push(Kernels::with_subgroups(device, Variant::CompactTile, false));
    }
    let graph = model.spec.graph(batch).unwrap();
    for (kernels, (layers, gemms)) in kernel_sets.iter().flat_map(|k| specialised.map(|w| (k, w))) {
        // Before the plan exists, as a page does while the weights download.
        let prepared = InferencePlan::prepare_kernels(device, kernels, &graph, layers);
        let plan = InferencePlan::new(device, queue, kernels, &model, batch, layers).unwrap();
        assert_eq!((plan.batch(), plan.classes()), (batch, 10));
        let with = if kernels.conv2d.subgroup_loads() {
            " with subgroups"
        } else {
            ""
        };
        let variant = kernels.variant;
        let what = format!("{variant:?}{with}, specialised layers {layers:?}");
        let mut run: BTreeSet<&str> = plan.dispatches().iter().map(|d| d.entry_point()).collect();
        // Winograd's weight transform ran as the plan built, not among its dispatches.
        if run.contains("conv2d_winograd_input") {
            run.insert("conv2d_winograd_weights");
        }
        assert_eq!(prepared, run, "kernels prepared for {what} against those the plan runs");
        let ran: BTreeSet<&str> = plan
            .dispatches()
            .iter()
            .map(|d| d.entry_point())
            .filter(|e| e.starts_with("conv2d_winograd_gemm") || e.contains("3_taps"))
            .collect();
        let expected: BTreeSet<&str> = match variant {
            Variant::CompactTile => gemms.iter().copied().collect(),
            _ => BTreeSet::new(),
        };
        assert_eq!(ran, expected, "{what}");
        // Twice: the second run reuses the staging buffer and every activation.
        for run in 0..2 {
            let got = pollster::block_on(plan.logits(device, queue, &images)).unwrap();
            assert_logits_match(&format!("{what} run {run} folded logits"), &got, &want);
        }
    }
    // Here the plans differ exactly where their specialised GEMMs do.
    let [(a, a_gemms), (b, b_gemms)] = specialised;
    for kernels in &kernel_sets {
        let differ = kernels.variant == Variant::CompactTile && a_gemms != b_gemms;
        assert_eq!(
            InferencePlan::plans_differ(device, kernels, &graph, a, b),
            differ,
            "{:?}: whether the plans with {a:?} and {b:?} differ",
            kernels.variant
        );
    }
}

#[test]
fn folded_resnet8_inference_plan_matches_the_unfolded_reference_in_every_variant() {
    // Batch 1, as a page runs it: none of its convolutions is wide enough for
    // a specialised kernel in a first plan; in the plan a page swaps in, the
    // 32x32 and 16x16 stages (64 and 16 tiles) take the 8-row Winograd GEMM,
    // the 8x8 one (4 tiles) the 4-row GEMM, the downsampling ones the 3-tap
    // stride-2 GEMM, and the stem (3 input channels, too few for Winograd)
    // the 3-tap stride-1 GEMM.
    assert_inference_plan_matches_reference(
        cifar_spec(8),
        1,
        [
            (SpecialisedLayers::Wide, &[]),
            (
                SpecialisedLayers::All,
                &[
                    "conv2d_implicit_gemm_compact_3_taps_stride1_fused",
                    "conv2d_implicit_gemm_compact_3_taps_stride2_fused",
                    "conv2d_winograd_gemm",
                    "conv2d_winograd_gemm_4_rows",
                ],
            ),
        ],
    );
}

#[test]
fn folded_imagenet_resnet18_option_b_inference_plan_matches_the_unfolded_reference_in_every_variant() {
    // Batch 4: the 16x16 and 8x8 stages have 64 and 16 tiles of 4x4 pixels,
    // enough for Winograd with the compact tile (tiles as columns, then as
    // rows), and the 4x4 and 2x2 ones 4 tiles of 256 and 512 channels (the
    // 4-row GEMM); its downsampling convolutions (64 channels and up) take
    // the 3-tap stride-2 GEMM in both plans.
    let gemms: &[&str] = &[
        "conv2d_implicit_gemm_compact_3_taps_stride2_fused",
        "conv2d_winograd_gemm",
        "conv2d_winograd_gemm_4_rows",
    ];
    assert_inference_plan_matches_reference(
        imagenet18_spec(),
        4,
        [(SpecialisedLayers::Wide, gemms), (SpecialisedLayers::All, gemms)],
    );
}

#[test]
fn folded_cpu_inference_matches_the_unfolded_reference() {
    for (spec, batch) in [(cifar_spec(8), 3), (imagenet18_spec(), 2)] {
        let model = trained_like(spec, 6);
        let images = images_for(&model, batch);
        let net = FoldedNetwork::new(&model, batch).unwrap();
        // A first inference on other images leaves the reused buffers dirty.
        let other: Vec<f32> = images.iter().map(|v| 1.0 - v).collect();
        inference::cpu::infer(&net, &other);
        let got = inference::cpu::infer(&net, &images);
        let name = model.spec.architecture.name();
        assert_logits_match(
            &format!("{name} cpu folded logits"),
            &got,
            &unfolded_logits(&model, batch, &images),
        );
    }
}

#[test]
fn folding_leaves_one_op_per_convolution_with_every_batch_norm_relu_and_add_fused() {
    let count = |net: &FoldedNetwork, f: &dyn Fn(&FoldedOp) -> bool| net.ops.iter().filter(|op| f(op)).count();
    let conv = |op: &FoldedOp, residual: bool, relu: bool| matches!(op, FoldedOp::Conv(c) if c.residual.is_some() == residual && c.relu == relu);
    for (spec, convs, blocks, others) in [
        // 19 convolutions, 9 blocks; 2 option-A shortcuts, pool, fc.
        (cifar_spec(20), 19, 9, 4),
        // 17 + 3 projection convolutions, 8 blocks; max pool, pool, fc.
        (imagenet18_spec(), 20, 8, 3),
    ] {
        let net = FoldedNetwork::new(&Model::init(spec, 1).unwrap(), 2).unwrap();
        let projections = convs - 1 - 2 * blocks;
        assert_eq!(net.ops.len(), convs + others);
        // Stem and first conv of each block: + ReLU; second conv: + residual + ReLU.
        assert_eq!(count(&net, &|op| conv(op, false, true)), 1 + blocks);
        assert_eq!(count(&net, &|op| conv(op, true, true)), blocks);
        assert_eq!(count(&net, &|op| conv(op, false, false)), projections);
    }
}

#[test]
fn inference_plan_rejects_an_input_of_the_wrong_length() {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let model = trained_like(cifar_spec(8), 2);
    let plan = InferencePlan::new(device, queue, &ctx.kernels, &model, 2, SpecialisedLayers::All).unwrap();
    let short = vec![0.0; 3 * 32 * 32];
    let result = pollster::block_on(plan.logits(device, queue, &short));
    assert!(
        matches!(
            result,
            Err(EngineError::ShapeMismatch {
                got: 3072,
                len: 6144,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(plan.write_input(queue, &short).is_err());
    assert!(matches!(
        InferencePlan::new(device, queue, &ctx.kernels, &model, 0, SpecialisedLayers::All),
        Err(EngineError::Model(_))
    ));
}

#[test]
fn the_first_logits_report_a_build_the_device_rejected() {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let model = trained_like(cifar_spec(8), 2);
    let images = images_for(&model, 1);
    let plan = InferencePlan::new(device, queue, &ctx.kernels, &model, 1, SpecialisedLayers::All).unwrap();
    // A rejected submission stands in for a rejected weight transform.
    let (x, doomed) = (
        crate::Tensor::zeros(device, &[4]).unwrap(),
        crate::Tensor::zeros(device, &[4]).unwrap(),
    );
    let relu = crate::layers::relu::relu_forward(device, &ctx.kernels, &x, &doomed);
    doomed.buffer.destroy();
    let ((), verdict) = crate::kernel::with_device_verdict(device, || crate::kernel::submit(device, queue, &[&relu]));
    plan.replace_build_verdict(verdict);
    let first = pollster::block_on(plan.logits(device, queue, &images));
    assert!(
        matches!(&first, Err(EngineError::Device(m)) if m.contains("build") && m.contains("destroyed")),
        "{first:?}"
    );
    // The plan itself is sound: the next call reads its logits.
    let second = pollster::block_on(plan.logits(device, queue, &images)).unwrap();
    let want = unfolded_logits(&model, 1, &images);
    assert_close("logits", &second, &want, 1e-3, 1e-3);
}

/// Not a check: prints the median time of one ResNet-20 inference (submit and
/// wait) with the folded plan and with the unfolded eval-mode `Plan`, on this
/// machine's adapter, at batch 1 and 128. Run with `--ignored --nocapture`.
#[test]
#[ignore = "timing, prints only"]
fn resnet20_inference_timing_folded_plan_against_unfolded_plan() {
    let Some(ctx) = context() else { return };
    let (device, queue) = (ctx.device(), ctx.queue());
    let model = trained_like(cifar_spec(20), 3);
    for batch in [1, 128] {
        let images = images_for(&model, batch);
        let graph = model.spec.graph(batch).unwrap();
        let unfolded = Plan::inference(device, &ctx.kernels, graph, &model.params, &model.running).unwrap();
        let folded = InferencePlan::new(device, queue, &ctx.kernels, &model, batch, SpecialisedLayers::All).unwrap();
        unfolded.write_batch(queue, &images, &[]).unwrap();
        folded.write_input(queue, &images).unwrap();
        let time = |run: &dyn Fn()| {
            let start = std::time::Instant::now();
            run();
            device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            start.elapsed().as_secs_f64() * 1e3
        };
        let reps = if batch == 1 { 41 } else { 11 };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        // Interleaved, after a warm-up of each, so load changes hit both alike.
        for rep in 0..=reps {
            let t_folded = time(&|| folded.run(device, queue));
            let t_unfolded = time(&|| unfolded.step(device, queue));
            if rep > 0 {
                a.push(t_folded);
                b.push(t_unfolded);
            }
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        eprintln!(
            "ResNet-20 batch {batch} ({:?}): InferencePlan median {:.2} ms (min {:.2}), Plan::inference median {:.2} ms (min {:.2})",
            ctx.kernels.variant,
            a[reps / 2],
            a[0],
            b[reps / 2],
            b[0]
        );
    }
}
