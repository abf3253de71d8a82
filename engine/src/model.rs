//! A model: architecture, class names and preprocessing (its spec), plus
//! parameters and batch-norm running statistics; saved as safetensors with
//! torchvision's tensor names and the spec as metadata.

use crate::network::graph::Graph;
use crate::network::resnet::{BottleneckStride, Shortcut, cifar_resnet_for_input, imagenet_resnet};
use crate::preprocess::Normalization;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Architecture {
    /// CIFAR ResNet-(6n+2); `shortcut: None` is the plain network.
    Cifar { depth: usize, shortcut: Shortcut },
    /// ImageNet ResNet-18/34/50/101/152.
    Imagenet {
        depth: usize,
        shortcut: Shortcut,
        bottleneck_stride: BottleneckStride,
    },
}

impl Architecture {
    /// "ResNet-20", "Plain-20", ...
    pub fn name(&self) -> String {
        let (depth, shortcut) = match *self {
            Self::Cifar { depth, shortcut } | Self::Imagenet { depth, shortcut, .. } => (depth, shortcut),
        };
        let family = if shortcut == Shortcut::None { "Plain" } else { "ResNet" };
        format!("{family}-{depth}")
    }
}

/// Everything about a model except its numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub class_names: Vec<String>,
    /// Input image `[channels, height, width]`.
    pub input: [usize; 3],
    pub normalization: Normalization,
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("unsupported architecture: {0}")]
    Unsupported(String),
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error(
        "the file has no `resnet` metadata (architecture, classes, normalisation); convert it with `resnet-native import`"
    )]
    NoMetadata,
    #[error("bad `resnet` metadata: {0}")]
    Metadata(String),
    #[error("the weights do not match {arch}:\n{problems}")]
    Mismatch { arch: String, problems: String },
}

/// Metadata key holding the [`ModelSpec`] as JSON.
pub const METADATA_KEY: &str = "resnet";

/// What [`ModelSpec::from_header`] reads of a safetensors header's entries:
/// a tensor's shape, and our spec in the `__metadata__` entry.
#[derive(Deserialize)]
struct HeaderEntry {
    shape: Option<Vec<usize>>,
    /// Under [`METADATA_KEY`].
    resnet: Option<String>,
}

/// The longest safetensors header read (the safetensors crate's limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Other conventions mapped to torchvision's names on import: DataParallel's
/// `module.` prefix and `linear.` for the classifier (CIFAR reproductions).
pub const COMMON_RENAMES: &[(&str, &str)] = &[("module.linear.", "fc."), ("module.", ""), ("linear.", "fc.")];

/// CIFAR-10's class names in label order (its `batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// ImageNet-1k's class names in torchvision's label order.
pub fn imagenet_classes() -> Vec<String> {
    include_str!("../../weights/imagenet-classes.txt")
        .lines()
        .map(String::from)
        .collect()
}

/// Prefix of tensors that are not part of the model (e.g. a checkpoint's
/// momenta); loading a model skips them.
pub const EXTRA_PREFIX: &str = "extra.";

impl ModelSpec {
    /// The paper's CIFAR-10 ResNet-`depth`: option-A shortcuts, 3x32x32 images.
    pub fn cifar10(depth: usize) -> Self {
        Self {
            architecture: Architecture::Cifar {
                depth,
                shortcut: Shortcut::A,
            },
            class_names: CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
            input: [3, 32, 32],
            normalization: Normalization::imagenet(),
        }
    }

    /// The network as a graph for `batch` images.
    pub fn graph(&self, batch: usize) -> Result<Graph, ModelError> {
        let classes = self.class_names.len();
        match self.architecture {
            Architecture::Cifar { depth, shortcut } => {
                if depth < 8 || (depth - 2) % 6 != 0 {
                    return Err(ModelError::Unsupported(format!("CIFAR depth {depth} is not 6n+2")));
                }
                Ok(cifar_resnet_for_input(
                    batch,
                    (depth - 2) / 6,
                    shortcut,
                    classes,
                    self.input,
                ))
            }
            Architecture::Imagenet {
                depth,
                shortcut,
                bottleneck_stride,
            } => {
                if self.input[0] != 3 {
                    return Err(ModelError::Unsupported("ImageNet networks take RGB input".into()));
                }
                imagenet_resnet(batch, depth, shortcut, bottleneck_stride, classes, self.input[1]).ok_or_else(|| {
                    ModelError::Unsupported(format!("ImageNet depth {depth} (use 18, 34, 50, 101 or 152)"))
                })
            }
        }
    }
}

impl ModelSpec {
    /// The spec of a ResNet stored without our metadata, told from its tensor
    /// names and shapes: four stages make an ImageNet ResNet (depth from the
    /// blocks per stage and whether they are bottlenecks, 224x224 input,
    /// ImageNet labels and normalisation when it has 1000 classes), three
    /// stages a CIFAR ResNet-(6n+2) (32x32, or 28x28 when grey; CIFAR-10 labels
    /// when it has 10 classes). Projections on every block of the first stage
    /// mark option C, on the first block of the second option B; none, option A. The tensors themselves are
    /// checked when they are loaded into this spec.
    pub fn recognise(bytes: &[u8]) -> Result<Self, ModelError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        Self::recognise_shapes(
            file.tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec())),
        )
    }

    /// The spec that [`Model::load`] finds in a safetensors file, from the
    /// file's first bytes `prefix`: its header is enough, so a page can
    /// prepare the network while the weights download. `None` while `prefix`
    /// ends before the header does.
    pub fn from_header(prefix: &[u8]) -> Result<Option<Self>, ModelError> {
        let format = |why: &str| ModelError::Format(format!("safetensors header: {why}"));
        let Some(len) = prefix.get(..8) else { return Ok(None) };
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if len > MAX_HEADER_LEN {
            return Err(format(&format!("{len} bytes long")));
        }
        let Some(header) = prefix.get(8..8 + len as usize) else {
            return Ok(None);
        };
        let header = std::str::from_utf8(header).map_err(|e| format(&e.to_string()))?;
        let header: BTreeMap<String, HeaderEntry> = serde_json::from_str(header).map_err(|e| format(&e.to_string()))?;
        if let Some(json) = header.get("__metadata__").and_then(|m| m.resnet.as_deref()) {
            return serde_json::from_str(json)
                .map(Some)
                .map_err(|e| ModelError::Metadata(e.to_string()));
        }
        let tensors = header
            .into_iter()
            .filter(|(name, _)| name != "__metadata__")
            .map(|(name, entry)| match entry.shape {
                Some(shape) => Ok((name, shape)),
                None => Err(format(&format!("{name} has no shape"))),
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Self::recognise_shapes(tensors).map(Some)
    }

    /// As [`ModelSpec::recognise`], from each tensor's name and shape.
    fn recognise_shapes(tensors: impl IntoIterator<Item = (String, Vec<usize>)>) -> Result<Self, ModelError> {
        let shapes: BTreeMap<String, Vec<usize>> = tensors
            .into_iter()
            .map(|(name, shape)| {
                let renamed = COMMON_RENAMES
                    .iter()
                    .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
                    .unwrap_or(name);
                (renamed, shape)
            })
            .collect();
        let unknown = |why: &str| ModelError::Unsupported(format!("not a ResNet this engine knows: {why}"));
        let stem = shapes.get("conv1.weight").ok_or_else(|| unknown("no conv1.weight"))?;
        let fc = shapes
            .get("fc.weight")
            .ok_or_else(|| unknown("no fc.weight (or linear.weight)"))?;
        let (channels, classes) = (stem[1], fc[0]);
        let blocks: Vec<usize> = (1..=4)
            .map(|stage| {
                let prefix = format!("layer{stage}.");
                shapes
                    .keys()
                    .filter_map(|n| n.strip_prefix(&prefix)?.split('.').next()?.parse::<usize>().ok())
                    .map(|b| b + 1)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let projects = |stage: usize, block: usize| {
            let prefix = format!("layer{stage}.{block}.");
            shapes
                .keys()
                .any(|n| n.starts_with(&prefix) && (n.contains(".downsample.") || n.contains(".shortcut.")))
        };
        // Option B projects only where the shape changes, which in a
        // bottleneck network includes the first block; option C everywhere.
        let shortcut = if (0..blocks[0]).all(|b| projects(1, b)) && blocks[0] > 0 {
            Shortcut::C
        } else if projects(2, 0) {
            Shortcut::B
        } else {
            Shortcut::A
        };
        let class_names = |known: Vec<String>| {
            if known.len() == classes {
                known
            } else {
                (0..classes).map(|i| format!("class {i}")).collect()
            }
        };
        if blocks[3] > 0 {
            let bottleneck = shapes.contains_key("layer1.0.conv3.weight");
            let depth = match (&blocks[..], bottleneck) {
                ([2, 2, 2, 2], false) => 18,
                ([3, 4, 6, 3], false) => 34,
                ([3, 4, 6, 3], true) => 50,
                ([3, 4, 23, 3], true) => 101,
                ([3, 8, 36, 3], true) => 152,
                _ => return Err(unknown(&format!("blocks per stage {blocks:?}"))),
            };
            Ok(Self {
                architecture: Architecture::Imagenet {
                    depth,
                    shortcut: if shortcut == Shortcut::A { Shortcut::B } else { shortcut },
                    bottleneck_stride: BottleneckStride::OnConv3x3,
                },
                class_names: class_names(imagenet_classes()),
                input: [channels, 224, 224],
                normalization: Normalization::imagenet(),
            })
        } else if blocks[0] > 0 && blocks[1] == blocks[0] && blocks[2] == blocks[0] {
            let size = if channels == 1 { 28 } else { 32 };
            Ok(Self {
                architecture: Architecture::Cifar {
                    depth: 6 * blocks[0] + 2,
                    shortcut,
                },
                class_names: class_names(CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect()),
                input: [channels, size, size],
                normalization: Normalization::imagenet(),
            })
        } else {
            Err(unknown(&format!("blocks per stage {blocks:?}")))
        }
    }
}

/// A model with its parameters (flat, in [`Graph::param_offsets`] layout) and
/// running statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub spec: ModelSpec,
    pub params: Vec<f32>,
    pub running: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Model {
    /// Freshly initialised (He normal convs, BN 1/0, running 0/1).
    pub fn init(spec: ModelSpec, seed: u64) -> Result<Self, ModelError> {
        let graph = spec.graph(1)?;
        Ok(Self {
            params: graph.init_params(seed),
            running: crate::network::plan::fresh_running_stats(&graph),
            spec,
        })
    }

    /// Every named tensor of the model with its shape and values.
    fn named_tensors(&self, graph: &Graph) -> Vec<(String, Vec<usize>, &[f32])> {
        let (offsets, _) = graph.param_offsets();
        let params = graph
            .params
            .iter()
            .zip(offsets)
            .map(|(p, start)| (p.name.clone(), p.shape.clone(), &self.params[start..start + p.len()]));
        let stats = graph
            .batch_norms
            .iter()
            .zip(&self.running)
            .flat_map(|(bn, (mean, var))| {
                [
                    (format!("{}.running_mean", bn.name), vec![bn.channels], mean.as_slice()),
                    (format!("{}.running_var", bn.name), vec![bn.channels], var.as_slice()),
                ]
            });
        params.chain(stats).collect()
    }

    /// Serialises as safetensors (little-endian f32), spec in the metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        self.to_safetensors_with(&[], &[])
    }

    /// As [`Model::to_safetensors`], plus flat `extras` stored as
    /// `extra.<name>` (ignored when loading a model) and more metadata: a
    /// training checkpoint's momenta and state.
    pub fn to_safetensors_with(
        &self,
        extras: &[(&str, &[f32])],
        metadata: &[(&str, &str)],
    ) -> Result<Vec<u8>, ModelError> {
        let graph = self.spec.graph(1)?;
        let named = self.named_tensors(&graph).into_iter().chain(
            extras
                .iter()
                .map(|&(name, values)| (format!("{EXTRA_PREFIX}{name}"), vec![values.len()], values)),
        );
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .map(|(name, shape, values)| (name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| ModelError::Format(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = serde_json::to_string(&self.spec).map_err(|e| ModelError::Metadata(e.to_string()))?;
        let mut info = HashMap::from([(METADATA_KEY.to_string(), spec)]);
        info.extend(metadata.iter().map(|&(k, v)| (k.to_string(), v.to_string())));
        safetensors::serialize(views, Some(info)).map_err(|e| ModelError::Format(e.to_string()))
    }

    /// A flat extra tensor stored by [`Model::to_safetensors_with`].
    pub fn read_extra(bytes: &[u8], name: &str) -> Result<Option<Vec<f32>>, ModelError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        let Ok(view) = file.tensor(&format!("{EXTRA_PREFIX}{name}")) else {
            return Ok(None);
        };
        to_f32(&view)
            .map(Some)
            .ok_or_else(|| ModelError::Format(format!("extra tensor {name} is not floating point")))
    }

    /// A metadata value of a safetensors file.
    pub fn read_metadata(bytes: &[u8], key: &str) -> Result<Option<String>, ModelError> {
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        Ok(metadata.metadata().as_ref().and_then(|m| m.get(key)).cloned())
    }

    /// Loads a safetensors ResNet: ours (spec in the metadata), or one without
    /// metadata in torchvision's layout (or a common variant of it, see
    /// [`COMMON_RENAMES`]) whose architecture [`ModelSpec::recognise`] finds.
    pub fn load(bytes: &[u8]) -> Result<Self, ModelError> {
        if Self::read_metadata(bytes, METADATA_KEY)?.is_some() {
            Self::from_safetensors(bytes)
        } else {
            Self::from_tensors(ModelSpec::recognise(bytes)?, bytes, COMMON_RENAMES)
        }
    }

    /// Loads a file written by [`Model::to_safetensors`] (spec from its metadata).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ModelError> {
        let json = Self::read_metadata(bytes, METADATA_KEY)?.ok_or(ModelError::NoMetadata)?;
        let spec: ModelSpec = serde_json::from_str(&json).map_err(|e| ModelError::Metadata(e.to_string()))?;
        Self::from_tensors(spec, bytes, &[])
    }

    /// Loads the tensors of `bytes` into a model of `spec`, renaming each
    /// tensor by the first matching `(from_prefix, to_prefix)` of `renames`.
    /// Lists every missing, unexpected and mis-shaped tensor when they don't fit.
    /// `num_batches_tracked` counters are ignored.
    pub fn from_tensors(spec: ModelSpec, bytes: &[u8], renames: &[(&str, &str)]) -> Result<Self, ModelError> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format(e.to_string()))?;
        let mut available: BTreeMap<String, TensorView> = BTreeMap::new();
        for (name, view) in file.tensors() {
            if name.ends_with("num_batches_tracked") || name.starts_with(EXTRA_PREFIX) {
                continue;
            }
            let renamed = renames
                .iter()
                .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
                .unwrap_or(name);
            available.insert(renamed, view);
        }
        let graph = spec.graph(1)?;
        let (offsets, len) = graph.param_offsets();
        // Every value comes from the file: none to draw (ResNet-18's 11.7M
        // initial weights took most of its load, seconds in a browser).
        let mut model = Self {
            params: vec![0.0; len],
            running: crate::network::plan::fresh_running_stats(&graph),
            spec,
        };
        // Each tensor converts straight into its place; a model with problems
        // is dropped.
        let mut problems = Vec::new();
        let mut take = |name: &str, shape: &[usize], dst: &mut [f32]| match available.remove(name) {
            None => problems.push(format!("  missing: {name} {shape:?}")),
            Some(view) if view.shape() != shape => problems.push(format!(
                "  mis-shaped: {name} is {:?}, expected {shape:?}",
                view.shape()
            )),
            Some(view) if !write_f32(&view, dst) => problems.push(format!(
                "  unsupported dtype: {name} is {:?} (need F32/F64/F16/BF16)",
                view.dtype()
            )),
            Some(_) => {}
        };
        for (p, start) in graph.params.iter().zip(offsets) {
            take(&p.name, &p.shape, &mut model.params[start..start + p.len()]);
        }
        for (bn, (mean, var)) in graph.batch_norms.iter().zip(model.running.iter_mut()) {
            take(&format!("{}.running_mean", bn.name), &[bn.channels], mean);
            take(&format!("{}.running_var", bn.name), &[bn.channels], var);
        }
        problems.extend(available.keys().map(|name| format!("  unexpected: {name}")));
        if !problems.is_empty() {
            return Err(ModelError::Mismatch {
                arch: model.spec.architecture.name(),
                problems: problems.join("\n"),
            });
        }
        Ok(model)
    }
}

fn to_f32(view: &TensorView) -> Option<Vec<f32>> {
    let mut values = vec![0.0; view.shape().iter().product()];
    write_f32(view, &mut values).then_some(values)
}

/// Writes the values of `view` (as many as `dst` holds) into `dst` as f32;
/// `false` for a dtype that is not floating point.
fn write_f32(view: &TensorView, dst: &mut [f32]) -> bool {
    fn convert<const N: usize>(data: &[u8], dst: &mut [f32], f: impl Fn([u8; N]) -> f32) {
        for (d, b) in dst.iter_mut().zip(data.chunks_exact(N)) {
            *d = f(b.try_into().expect("N bytes"));
        }
    }
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => convert(data, dst, f32::from_le_bytes),
        Dtype::F64 => convert(data, dst, |b| f64::from_le_bytes(b) as f32),
        Dtype::BF16 => convert(data, dst, |b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)),
        Dtype::F16 => convert(data, dst, |b| f16_to_f32(u16::from_le_bytes(b))),
        _ => return false,
    }
    true
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        _ => (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resnet20_spec() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Cifar {
                depth: 20,
                shortcut: Shortcut::A,
            },
            class_names: (0..10).map(|i| format!("class {i}")).collect(),
            input: [3, 32, 32],
            normalization: Normalization::imagenet(),
        }
    }

    #[test]
    fn safetensors_round_trip_keeps_every_value_and_the_spec() {
        let mut model = Model::init(resnet20_spec(), 3).unwrap();
        model.running[0].0[1] = 0.25;
        let bytes = model.to_safetensors().unwrap();
        let back = Model::from_safetensors(&bytes).unwrap();
        assert_eq!(back, model);
        // A checkpoint adds momenta and state, and still loads as the model.
        let velocity = [1.5f32, -2.0];
        let bytes = model
            .to_safetensors_with(&[("velocity", &velocity)], &[("state", "{}")])
            .unwrap();
        assert_eq!(Model::from_safetensors(&bytes).unwrap(), model);
        assert_eq!(Model::read_extra(&bytes, "velocity").unwrap().unwrap(), velocity);
        assert_eq!(Model::read_metadata(&bytes, "state").unwrap().as_deref(), Some("{}"));
        assert_eq!(Model::read_extra(&bytes, "absent").unwrap(), None);
        let bytes = model.to_safetensors().unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
        // 20 weighted layers' weights + BN (2 params + 2 stats) x 19 + fc bias.
        assert_eq!(names, 20 + 19 * 4 + 1);
    }

    #[test]
    fn import_renames_prefixes_and_lists_every_problem() {
        let model = Model::init(resnet20_spec(), 4).unwrap();
        let graph = model.spec.graph(1).unwrap();
        let named = model.named_tensors(&graph);
        // Re-export with PyTorch-DataParallel names and the reference's `linear.`.
        let renamed: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .iter()
            .map(|(n, s, v)| {
                let n = n.replacen("fc.", "linear.", 1);
                (
                    format!("module.{n}"),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<_> = renamed
            .iter()
            .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views.clone(), None).unwrap();
        assert!(matches!(Model::from_safetensors(&bytes), Err(ModelError::NoMetadata)));
        let renames = [("module.linear.", "fc."), ("module.", "")];
        let imported = Model::from_tensors(resnet20_spec(), &bytes, &renames).unwrap();
        assert_eq!(imported.params, model.params);

        // Drop one tensor, reshape another, add a stray one: all three are named.
        let mut broken: Vec<_> = views
            .into_iter()
            .filter(|(n, _)| n != "module.layer1.0.conv1.weight")
            .collect();
        let stray = [0u8; 8];
        broken.push((
            "module.extra".into(),
            TensorView::new(Dtype::F32, vec![2], &stray).unwrap(),
        ));
        let index = broken.iter().position(|(n, _)| n == "module.bn1.weight").unwrap();
        let wrong = [0u8; 12];
        broken[index].1 = TensorView::new(Dtype::F32, vec![3], &wrong).unwrap();
        let bytes = safetensors::serialize(broken, None).unwrap();
        let err = Model::from_tensors(resnet20_spec(), &bytes, &renames)
            .unwrap_err()
            .to_string();
        for needle in [
            "missing: layer1.0.conv1.weight",
            "mis-shaped: bn1.weight",
            "unexpected: extra",
        ] {
            assert!(err.contains(needle), "{needle} not in: {err}");
        }
    }

    /// The model's tensors as safetensors without our metadata, as torchvision
    /// or a CIFAR reproduction would save them.
    fn without_metadata(model: &Model, prefix: &str) -> Vec<u8> {
        let graph = model.spec.graph(1).unwrap();
        let named: Vec<(String, Vec<usize>, Vec<u8>)> = model
            .named_tensors(&graph)
            .into_iter()
            .map(|(n, s, v)| {
                (
                    format!("{prefix}{n}"),
                    s,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<_> = named
            .iter()
            .map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), d).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    /// What [`ModelSpec::recognise`] makes of a torchvision-layout ResNet.
    fn imagenet_spec(depth: usize, classes: usize) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Imagenet {
                depth,
                shortcut: Shortcut::B,
                bottleneck_stride: BottleneckStride::OnConv3x3,
            },
            class_names: if classes == 1000 {
                imagenet_classes()
            } else {
                (0..classes).map(|i| format!("class {i}")).collect()
            },
            input: [3, 224, 224],
            normalization: Normalization::imagenet(),
        }
    }

    #[test]
    fn files_without_metadata_are_recognised_from_their_tensors() {
        let cifar = |depth, shortcut| ModelSpec {
            architecture: Architecture::Cifar { depth, shortcut },
            class_names: CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
            input: [3, 32, 32],
            normalization: Normalization::imagenet(),
        };
        let specs = [
            (imagenet_spec(18, 1000), ""),
            (imagenet_spec(50, 7), ""),
            (cifar(20, Shortcut::A), "module."),
            (cifar(32, Shortcut::B), ""),
            (cifar(8, Shortcut::C), ""),
        ];
        for (spec, prefix) in specs {
            let model = Model::init(spec.clone(), 5).unwrap();
            let bytes = without_metadata(&model, prefix);
            assert_eq!(ModelSpec::recognise(&bytes).unwrap(), spec);
            assert_eq!(Model::load(&bytes).unwrap(), model);
        }
        assert_eq!(imagenet_classes().len(), 1000);
        // Something else entirely is named as such.
        let data = [0u8; 16];
        let other = safetensors::serialize(
            [("embed.weight", TensorView::new(Dtype::F32, vec![4], &data).unwrap())],
            None,
        )
        .unwrap();
        let err = Model::load(&other).unwrap_err().to_string();
        assert!(err.contains("not a ResNet this engine knows: no conv1.weight"), "{err}");
    }

    #[test]
    fn the_spec_is_read_from_the_header_alone() {
        let ours = Model::init(resnet20_spec(), 6).unwrap();
        // Without our metadata, a CIFAR ResNet-20 with CIFAR-10's labels.
        let cifar = ModelSpec::recognise(&without_metadata(&ours, "")).unwrap();
        assert_ne!(cifar, ours.spec);
        let resnet18 = imagenet_spec(18, 1000);
        let torchvision = without_metadata(&Model::init(resnet18.clone(), 1).unwrap(), "");
        for (bytes, spec) in [
            (ours.to_safetensors().unwrap(), &ours.spec),
            (without_metadata(&ours, "module."), &cifar),
            (torchvision, &resnet18),
        ] {
            let end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(&Model::load(&bytes).unwrap().spec, spec);
            for short in [0, 7, 8, end - 1] {
                assert_eq!(
                    ModelSpec::from_header(&bytes[..short]).unwrap(),
                    None,
                    "{short} of {end} bytes"
                );
            }
            assert_eq!(ModelSpec::from_header(&bytes[..end]).unwrap().as_ref(), Some(spec));
            assert_eq!(ModelSpec::from_header(&bytes).unwrap().as_ref(), Some(spec));
        }
        let mut garbage = 20u64.to_le_bytes().to_vec();
        garbage.extend(b"{not json at all....");
        assert!(matches!(ModelSpec::from_header(&garbage), Err(ModelError::Format(_))));
        let huge = u64::MAX.to_le_bytes();
        assert!(matches!(ModelSpec::from_header(&huge), Err(ModelError::Format(_))));
    }

    #[test]
    fn every_float_dtype_loads_and_an_integer_tensor_is_named() {
        let mut model = Model::init(resnet20_spec(), 7).unwrap();
        // Multiples of 1/8 in [-4, 4): every float dtype holds them exactly.
        let round = |v: &mut f32| *v = ((*v * 8.0).round().clamp(-32.0, 31.0)) / 8.0;
        model.params.iter_mut().for_each(round);
        for (mean, var) in &mut model.running {
            mean.iter_mut().chain(var.iter_mut()).for_each(round);
        }
        let f16 = |v: f32| -> [u8; 2] {
            if v == 0.0 {
                return [0, 0];
            }
            let exponent = v.abs().log2().floor() as i32;
            let mantissa = (v.abs() / 2f32.powi(exponent) - 1.0) * 1024.0;
            let bits = (u16::from(v < 0.0) << 15) | (((exponent + 15) as u16) << 10) | mantissa as u16;
            bits.to_le_bytes()
        };
        type Encode<'a> = &'a dyn Fn(f32) -> Vec<u8>;
        let encodings: [(Dtype, Encode); 4] = [
            (Dtype::F32, &|v| v.to_le_bytes().to_vec()),
            (Dtype::F64, &|v| f64::from(v).to_le_bytes().to_vec()),
            (Dtype::BF16, &|v| ((v.to_bits() >> 16) as u16).to_le_bytes().to_vec()),
            (Dtype::F16, &|v| f16(v).to_vec()),
        ];
        let graph = model.spec.graph(1).unwrap();
        let tensors = model.named_tensors(&graph);
        for (dtype, encode) in encodings {
            let data: Vec<Vec<u8>> = tensors
                .iter()
                .map(|(_, _, v)| v.iter().flat_map(|&x| encode(x)).collect())
                .collect();
            let views: Vec<_> = tensors
                .iter()
                .zip(&data)
                .map(|((n, s, _), d)| (n.clone(), TensorView::new(dtype, s.clone(), d).unwrap()))
                .collect();
            let bytes = safetensors::serialize(views.clone(), None).unwrap();
            let loaded = Model::from_tensors(model.spec.clone(), &bytes, &[]).unwrap();
            assert_eq!(loaded, model, "{dtype:?}");
        }
        // An integer tensor in the place of a weight is named, not read.
        let views: Vec<_> = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, s, v))| {
                let dtype = if i == 0 { Dtype::I32 } else { Dtype::F32 };
                (
                    n.clone(),
                    TensorView::new(dtype, s.clone(), bytemuck::cast_slice(v)).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let err = Model::from_tensors(model.spec.clone(), &bytes, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("unsupported dtype: {} is I32", tensors[0].0)),
            "{err}"
        );
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    }
}
