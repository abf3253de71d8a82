//! The paper's networks as graphs.

use super::graph::{Graph, GraphBuilder, TensorId};

/// CIFAR ResNet-(6n+2) (paper section 4.2): 3x3 conv with 16 filters, three
/// stages of `n` basic blocks on 32/16/8-pixel maps with 16/32/64 filters
/// (stride-2 first conv in stages 2 and 3), global average pool, `classes`-way
/// fully connected layer. Shortcuts are option A; `residual = false` gives the
/// plain counterpart (same layers, no shortcuts).
pub fn cifar_resnet(batch: usize, n: usize, residual: bool, classes: usize) -> Graph {
    let shortcut = if residual { Shortcut::A } else { Shortcut::None };
    cifar_resnet_for_input(batch, n, shortcut, classes, [3, 32, 32])
}

/// As [`cifar_resnet`], with any shortcut option, for images of
/// `[channels, h, w]` (e.g. 1x28x28 Fashion-MNIST).
pub fn cifar_resnet_for_input(batch: usize, n: usize, shortcut: Shortcut, classes: usize, input: [usize; 3]) -> Graph {
    let mut g = GraphBuilder::new(batch, input[0], input[1], input[2]);
    let stem = g.conv_bn("", 1, g.input(), 16, 3, 1);
    let mut x = g.relu(stem);
    for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = basic_block(
                &mut g,
                &format!("layer{}.{block}.", stage + 1),
                x,
                planes,
                stride,
                shortcut,
            );
        }
    }
    let pooled = g.global_avg_pool(x);
    let logits = g.linear("fc", pooled, classes);
    g.finish(logits)
}

/// conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU.
fn basic_block(
    g: &mut GraphBuilder,
    prefix: &str,
    x: TensorId,
    planes: usize,
    stride: usize,
    shortcut: Shortcut,
) -> TensorId {
    let h = g.conv_bn(prefix, 1, x, planes, 3, stride);
    let h = g.relu(h);
    let h = g.conv_bn(prefix, 2, h, planes, 3, 1);
    add_shortcut(g, prefix, x, h, planes, stride, shortcut)
}

/// How a block's input reaches its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shortcut {
    /// Plain network: no shortcut at all.
    None,
    /// Identity; where the shape changes, stride-2 subsampling + zero channels.
    A,
    /// Identity; 1x1 conv + BN projection where the shape changes (torchvision).
    B,
    /// 1x1 conv + BN projection on every shortcut.
    C,
}

/// Where a bottleneck block downsamples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BottleneckStride {
    /// On the 3x3 conv (torchvision's "v1.5"; its weights need this).
    OnConv3x3,
    /// On the first 1x1 conv (the original paper).
    OnConv1x1,
}

/// ImageNet ResNet-18/34/50/101/152 (paper table 1) for `image`-pixel inputs.
pub fn imagenet_resnet(
    batch: usize,
    depth: usize,
    shortcut: Shortcut,
    bottleneck_stride: BottleneckStride,
    classes: usize,
    image: usize,
) -> Option<Graph> {
    let (blocks, bottleneck) = match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        101 => ([3, 4, 23, 3], true),
        152 => ([3, 8, 36, 3], true),
        _ => return None,
    };
    let mut g = GraphBuilder::new(batch, 3, image, image);
    let stem = g.conv2d("conv1", g.input(), 64, 7, 2, 3);
    let stem = g.batch_norm("bn1", stem);
    let stem = g.relu(stem);
    let mut x = g.max_pool(stem, 3, 2, 1);
    for (stage, (&count, planes)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        for block in 0..count {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let prefix = format!("layer{}.{block}.", stage + 1);
            x = if bottleneck {
                bottleneck_block(&mut g, &prefix, x, planes, stride, shortcut, bottleneck_stride)
            } else {
                basic_block(&mut g, &prefix, x, planes, stride, shortcut)
            };
        }
    }
    let pooled = g.global_avg_pool(x);
    let logits = g.linear("fc", pooled, classes);
    Some(g.finish(logits))
}

fn bottleneck_block(
    g: &mut GraphBuilder,
    prefix: &str,
    x: TensorId,
    planes: usize,
    stride: usize,
    shortcut: Shortcut,
    where_stride: BottleneckStride,
) -> TensorId {
    let (s1, s3) = match where_stride {
        BottleneckStride::OnConv1x1 => (stride, 1),
        BottleneckStride::OnConv3x3 => (1, stride),
    };
    let h = g.conv_bn(prefix, 1, x, planes, 1, s1);
    let h = g.relu(h);
    let h = g.conv_bn(prefix, 2, h, planes, 3, s3);
    let h = g.relu(h);
    let h = g.conv_bn(prefix, 3, h, planes * 4, 1, 1);
    add_shortcut(g, prefix, x, h, planes * 4, stride, shortcut)
}

/// Adds the shortcut of `x` to the block output `h`, then ReLU.
fn add_shortcut(
    g: &mut GraphBuilder,
    prefix: &str,
    x: TensorId,
    h: TensorId,
    out_channels: usize,
    stride: usize,
    shortcut: Shortcut,
) -> TensorId {
    let reshapes = stride != 1 || g.shape(x)[1] != out_channels;
    let h = match shortcut {
        Shortcut::None => h,
        Shortcut::A if reshapes => {
            let s = g.shortcut_a(x, out_channels, stride);
            g.add(h, s)
        }
        Shortcut::A | Shortcut::B if !reshapes => g.add(h, x),
        Shortcut::A | Shortcut::B | Shortcut::C => {
            let conv = g.conv2d(&format!("{prefix}downsample.0"), x, out_channels, 1, stride, 0);
            let s = g.batch_norm(&format!("{prefix}downsample.1"), conv);
            g.add(h, s)
        }
    };
    g.relu(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_resnet_parameter_counts_match_the_paper() {
        // Published counts (torchvision-style counting: conv, BN affine, fc).
        for (n, expected) in [(3, 269_722), (5, 464_154), (9, 853_018)] {
            assert_eq!(
                cifar_resnet(1, n, true, 10).param_count(),
                expected,
                "ResNet-{}",
                6 * n + 2
            );
        }
    }

    #[test]
    fn cifar_resnet_20_has_the_papers_layers_and_flops() {
        let g = cifar_resnet(2, 3, true, 10);
        let convs = g.params.iter().filter(|p| p.shape.len() == 4).count();
        assert_eq!(convs + 1, 20, "19 convolutions + 1 fc = 20 weighted layers");
        assert_eq!(g.tensors[g.logits], vec![2, 10]);
        // ~41 M multiply-adds per image for ResNet-20.
        let macs = g.forward_flops_per_image() / 2.0;
        assert!((40e6..42e6).contains(&macs), "{macs}");
        assert_eq!(g.params[0].name, "conv1.weight");
        assert!(g.params.iter().any(|p| p.name == "layer3.2.bn2.bias"));
        assert_eq!(g.params.last().unwrap().name, "fc.bias");
    }

    #[test]
    fn imagenet_resnet_parameter_counts_match_torchvision() {
        for (depth, expected) in [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)] {
            let g = imagenet_resnet(1, depth, Shortcut::B, BottleneckStride::OnConv3x3, 1000, 224).unwrap();
            assert_eq!(g.param_count(), expected, "ResNet-{depth}");
        }
        // ResNet-18 is 1.8 GFLOPs (multiply-adds) in the paper's table 1.
        let g = imagenet_resnet(1, 18, Shortcut::B, BottleneckStride::OnConv3x3, 1000, 224).unwrap();
        let macs = g.forward_flops_per_image() / 2.0;
        assert!((1.8e9..1.83e9).contains(&macs), "{macs}");
        assert!(g.params.iter().any(|p| p.name == "layer2.0.downsample.0.weight"));
        assert!(imagenet_resnet(1, 19, Shortcut::B, BottleneckStride::OnConv3x3, 1000, 224).is_none());
    }

    #[test]
    fn plain_network_has_the_same_parameters_and_no_adds() {
        let plain = cifar_resnet(1, 3, false, 10);
        let res = cifar_resnet(1, 3, true, 10);
        assert_eq!(plain.params, res.params);
        assert!(
            !plain
                .ops
                .iter()
                .any(|op| matches!(op, super::super::graph::Op::Add { .. }))
        );
    }
}
