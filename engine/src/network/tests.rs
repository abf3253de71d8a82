//! Whole-network tests: the GPU plan against the CPU reference, and training.

use super::cpu::{self, RunningStats};
use super::resnet::{BottleneckStride, Shortcut, imagenet_resnet};
use super::{Plan, cifar_resnet};
use crate::layers::sgd::SgdParams;
use crate::rng::Rng;
use crate::testing::{assert_close, context};

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
