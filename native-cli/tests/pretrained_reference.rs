//! The published CIFAR-10 ResNet-20/32 weights (../shared/data/pretrained-reference),
//! imported and evaluated on the real test set, must score exactly what they
//! score in PyTorch: this proves weight import, eval-mode batch norm, the
//! option-A shortcut and input normalisation end to end on the GPU.

use engine::model::{COMMON_RENAMES, Model, ModelSpec};
use engine::network::Plan;
use engine::testing::context;
use resnet_native::data::{Split, cifar10};
use resnet_native::evaluate::evaluate;
use std::path::PathBuf;
use std::sync::Arc;

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if dir.join("pretrained-reference").is_dir() && dir.join("cifar-10-batches-bin").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (it is beside the project on CI and dev machines)",
            dir.display()
        );
        None
    }
}

fn check(depth: usize, expected_correct: usize) {
    let Some(dir) = shared() else { return };
    let Some(ctx) = context() else { return };
    let spec = ModelSpec::cifar10(depth);
    let bytes = std::fs::read(dir.join(format!("pretrained-reference/akamaster-resnet{depth}.safetensors"))).unwrap();
    let model = Model::from_tensors(spec.clone(), &bytes, COMMON_RENAMES).unwrap();
    let test = Arc::new(cifar10(&dir.join("cifar-10-batches-bin"), Split::Test).unwrap());
    let plan = Plan::inference(
        ctx.device(),
        &ctx.kernels,
        spec.graph(500).unwrap(),
        &model.params,
        &model.running,
    )
    .unwrap();
    let result = evaluate(ctx, &plan, test, &spec.normalization).unwrap();
    assert_eq!(result.count, 10_000);
    assert_eq!(
        result.top1_correct, expected_correct,
        "ResNet-{depth} top-1 on the CIFAR-10 test set"
    );
}

#[test]
fn published_resnet20_scores_9173_of_10000() {
    check(20, 9173);
}

#[test]
fn published_resnet32_scores_9263_of_10000() {
    check(32, 9263);
}
