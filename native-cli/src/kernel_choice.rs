//! Which kernel variant runs fastest on this machine's adapter: measured once
//! per adapter and engine build (a ResNet-20 training step in each variant),
//! then cached on disk so that later commands start at once. The adapter's kind
//! alone is a guess (CPU adapters want register tiles, GPUs workgroup tiles);
//! an unfamiliar GPU or driver may disagree, and the measurement settles it.

use crate::train::write_atomically;
use anyhow::Context as _;
use engine::layers::sgd::SgdParams;
use engine::model::{Model, ModelSpec};
use engine::network::{Graph, Plan};
use engine::rng::Rng;
use engine::{AdapterSummary, Context, Gpu, Kernels, Variant, tiled_kernels_fingerprint};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Images per measured training step: enough for every kernel to see
/// realistically long reductions, few enough that a CPU adapter measures all
/// three variants in seconds.
pub const MEASURE_BATCH: usize = 32;

/// How the variant was chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `RESNET_KERNEL_VARIANT`.
    Environment,
    /// An earlier measurement on this adapter with these kernels.
    Cached {
        path: PathBuf,
        step_ms: Vec<(Variant, f64)>,
    },
    /// Measured now; `path` is where it was cached (none without a cache directory).
    Measured {
        path: Option<PathBuf>,
        step_ms: Vec<(Variant, f64)>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub variant: Variant,
    pub source: Source,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let times = |step_ms: &[(Variant, f64)]| {
            let times: Vec<String> = step_ms.iter().map(|(v, ms)| format!("{v:?} {ms:.1} ms")).collect();
            format!(
                "a ResNet-20 training step of {MEASURE_BATCH} images took {}",
                times.join(", ")
            )
        };
        write!(f, "{:?} kernels", self.variant)?;
        match &self.source {
            Source::Environment => write!(f, " (RESNET_KERNEL_VARIANT)"),
            Source::Cached { path, step_ms } => {
                write!(
                    f,
                    " (measured earlier: {}; cached in {})",
                    times(step_ms),
                    path.display()
                )
            }
            Source::Measured {
                path: Some(path),
                step_ms,
            } => {
                write!(f, " (measured: {}; cached in {})", times(step_ms), path.display())
            }
            Source::Measured { path: None, step_ms } => write!(f, " (measured: {}; not cached)", times(step_ms)),
        }
    }
}

/// Opens the default adapter with the kernels [`choose`] picks for it.
pub fn open_context() -> anyhow::Result<(Context, Choice)> {
    let gpu = Gpu::new_blocking().context("opening the GPU")?;
    let choice = choose(&gpu)?;
    Ok((Context::with_variant(gpu, choice.variant), choice))
}

/// The variant for `gpu`: `RESNET_KERNEL_VARIANT` if set, else the cached
/// measurement for this adapter and build, else a measurement made now and
/// cached (in `RESNET_CACHE_DIR`, `$XDG_CACHE_HOME/resnet-native` or
/// `~/.cache/resnet-native`).
pub fn choose(gpu: &Gpu) -> anyhow::Result<Choice> {
    if let Ok(name) = std::env::var("RESNET_KERNEL_VARIANT") {
        let variant = Variant::parse(&name)
            .with_context(|| format!("RESNET_KERNEL_VARIANT={name:?}: expected register, workgroup or compact"))?;
        return Ok(Choice {
            variant,
            source: Source::Environment,
        });
    }
    choose_with_cache(gpu, cache_file().as_deref(), MEASURE_BATCH)
}

/// [`choose`] without the environment: the cache at `path` (if any), else a
/// measurement at `batch` images per step, written back to `path`.
pub fn choose_with_cache(gpu: &Gpu, path: Option<&Path>, batch: usize) -> anyhow::Result<Choice> {
    let key = CacheKey::new(&gpu.adapter);
    let mut cache = match path {
        Some(path) => Cache::load(path),
        None => Cache::default(),
    };
    if let (Some(path), Some(entry)) = (path, cache.find(&key)) {
        return Ok(Choice {
            variant: entry.variant,
            source: Source::Cached {
                path: path.to_path_buf(),
                step_ms: entry.step_ms.clone(),
            },
        });
    }
    eprintln!(
        "measuring the kernel variants on {} (once per adapter and build)...",
        gpu.adapter.name
    );
    let step_ms = measure(gpu, batch)?;
    let variant = fastest(&step_ms);
    let mut cached = None;
    if let Some(path) = path {
        cache.insert(CacheEntry {
            key,
            variant,
            step_ms: step_ms.clone(),
        });
        match cache.save(path) {
            Ok(()) => cached = Some(path.to_path_buf()),
            Err(e) => eprintln!("warning: the measurement is not cached: {e:#}"),
        }
    }
    let choice = Choice {
        variant,
        source: Source::Measured { path: cached, step_ms },
    };
    eprintln!("using {choice}");
    Ok(choice)
}

/// Milliseconds of one ResNet-20 training step of `batch` images in each
/// variant: the faster of two steps after a warm-up step that compiles the
/// pipelines. A variant whose warm-up alone is over three times the best step
/// so far has lost already; its warm-up is its figure (on lavapipe that saves
/// the workgroup tiles' slow steps).
pub fn measure(gpu: &Gpu, batch: usize) -> anyhow::Result<Vec<(Variant, f64)>> {
    let mut step_ms: Vec<(Variant, f64)> = Vec::new();
    for variant in Variant::ALL {
        let kernels = Kernels::new(&gpu.device, variant);
        let step = TrainingStep::new(gpu, &kernels, &ModelSpec::cifar10(20), batch)?;
        let warm_up = step.run(gpu)?;
        let best_so_far = step_ms.iter().map(|&(_, ms)| ms).fold(f64::INFINITY, f64::min);
        let time = if warm_up.as_secs_f64() * 1e3 > 3.0 * best_so_far {
            warm_up
        } else {
            step.run(gpu)?.min(step.run(gpu)?)
        };
        // Whole microseconds: what the cache stores and reads back exactly.
        step_ms.push((variant, (time.as_secs_f64() * 1e6).round() / 1e3));
    }
    Ok(step_ms)
}

/// The variant of the shortest step (the first of equals).
pub fn fastest(step_ms: &[(Variant, f64)]) -> Variant {
    step_ms
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|&(variant, _)| variant)
        .expect("at least one variant was measured")
}

/// The paper's SGD recipe, so an update does the work a real step does.
pub const SGD: SgdParams = SgdParams {
    lr: 0.1,
    momentum: 0.9,
    weight_decay: 1e-4,
    len: 0,
};

/// A training step (forward, loss, backward, SGD) of freshly initialised
/// weights on random images, written once: what `bench` and the kernel
/// measurement time. Nothing is read back.
pub struct TrainingStep {
    plan: Plan,
}

impl TrainingStep {
    pub fn new(gpu: &Gpu, kernels: &Kernels, spec: &ModelSpec, batch: usize) -> anyhow::Result<Self> {
        let model = Model::init(spec.clone(), 1)?;
        let graph = spec.graph(batch)?;
        let (images, labels) = random_batch(&graph);
        let plan = Plan::training(&gpu.device, kernels, graph, &model.params, SGD)?;
        plan.write_batch(&gpu.queue, &images, &labels)?;
        Ok(Self { plan })
    }

    /// The step's plan, for profiling its dispatches.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Submits one step and waits for it: its wall-clock time.
    pub fn run(&self, gpu: &Gpu) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.plan.step(&gpu.device, &gpu.queue);
        gpu.wait()?;
        Ok(start.elapsed())
    }
}

/// Images uniform in [-1, 1] and labels for one batch of `graph`, the same
/// every call.
pub fn random_batch(graph: &Graph) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(3);
    let input_len = graph.tensors[graph.input].iter().product();
    let images = rng.vec(input_len, -1.0, 1.0).into_iter().map(|v| v as f32).collect();
    let labels = (0..graph.batch).map(|_| rng.below(graph.classes) as u32).collect();
    (images, labels)
}

/// `RESNET_CACHE_DIR`, else `$XDG_CACHE_HOME/resnet-native`, else
/// `~/.cache/resnet-native`; the file in it.
fn cache_file() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("RESNET_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("resnet-native")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/resnet-native")))?;
    Some(dir.join("kernel-variants.json"))
}

/// What a measurement is valid for: the adapter and driver, and the kernels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheKey {
    adapter: String,
    backend: String,
    driver: String,
    kernels: String,
}

impl CacheKey {
    fn new(adapter: &AdapterSummary) -> Self {
        Self {
            adapter: adapter.name.clone(),
            backend: adapter.backend.clone(),
            driver: adapter.driver.clone(),
            kernels: tiled_kernels_fingerprint(),
        }
    }

    fn same_device(&self, other: &Self) -> bool {
        (&self.adapter, &self.backend, &self.driver) == (&other.adapter, &other.backend, &other.driver)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheEntry {
    #[serde(flatten)]
    key: CacheKey,
    #[serde(with = "variant_name")]
    variant: Variant,
    #[serde(with = "variant_times")]
    step_ms: Vec<(Variant, f64)>,
}

/// Every adapter measured on this machine, one entry each.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    entries: Vec<CacheEntry>,
}

impl Cache {
    /// The cache at `path`; empty when it is missing or unreadable (it is
    /// measured again and rewritten, with a warning when it was corrupt).
    fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Err(_) => Self::default(),
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!("warning: ignoring {} ({e})", path.display());
                Self::default()
            }),
        }
    }

    fn find(&self, key: &CacheKey) -> Option<&CacheEntry> {
        self.entries.iter().find(|e| e.key == *key)
    }

    /// Adds `entry`, replacing any earlier one for its device (other kernels'
    /// measurements are stale).
    fn insert(&mut self, entry: CacheEntry) {
        self.entries.retain(|e| !e.key.same_device(&entry.key));
        self.entries.push(entry);
    }

    /// Written atomically: concurrent commands never read half a file.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_atomically(path, &serde_json::to_vec_pretty(self)?)
    }
}

/// Variants by their short names (`register`, ...), in the cache file.
mod variant_name {
    use engine::Variant;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(variant: &Variant, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(variant.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Variant, D::Error> {
        let name = String::deserialize(d)?;
        Variant::parse(&name).ok_or_else(|| D::Error::custom(format!("unknown kernel variant {name:?}")))
    }
}

/// Step times as a map from short name to milliseconds, in the cache file.
mod variant_times {
    use engine::Variant;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(times: &[(Variant, f64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(times.iter().map(|(v, ms)| (v.name(), ms)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Variant, f64)>, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(d)?;
        let mut times = map
            .into_iter()
            .map(|(name, ms)| {
                Variant::parse(&name)
                    .map(|v| (v, ms))
                    .ok_or_else(|| D::Error::custom(format!("unknown kernel variant {name:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        times.sort_by_key(|&(v, _)| Variant::ALL.iter().position(|&a| a == v));
        Ok(times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str) -> AdapterSummary {
        AdapterSummary {
            name: name.into(),
            backend: "Vulkan".into(),
            device_type: "DiscreteGpu".into(),
            driver: "driver 1.0".into(),
        }
    }

    fn entry(key: CacheKey, variant: Variant) -> CacheEntry {
        CacheEntry {
            key,
            variant,
            step_ms: vec![
                (Variant::RegisterTile, 12.5),
                (Variant::WorkgroupTile, 3.0),
                (Variant::CompactTile, 7.0),
            ],
        }
    }

    #[test]
    fn the_fastest_variant_is_the_one_with_the_shortest_step() {
        let times = [
            (Variant::RegisterTile, 9.0),
            (Variant::WorkgroupTile, 4.5),
            (Variant::CompactTile, 6.0),
        ];
        assert_eq!(fastest(&times), Variant::WorkgroupTile);
        let times = [
            (Variant::RegisterTile, 2.0),
            (Variant::WorkgroupTile, 4.5),
            (Variant::CompactTile, 2.0),
        ];
        assert_eq!(fastest(&times), Variant::RegisterTile);
    }

    #[test]
    fn the_cache_answers_for_the_same_adapter_and_kernels_only_and_keeps_one_entry_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kernel-variants.json");
        let gpu_a = CacheKey::new(&adapter("GPU A"));
        let gpu_b = CacheKey::new(&adapter("GPU B"));
        let mut cache = Cache::default();
        cache.insert(entry(gpu_a.clone(), Variant::WorkgroupTile));
        cache.insert(entry(gpu_b.clone(), Variant::CompactTile));
        cache.save(&path).unwrap();

        let loaded = Cache::load(&path);
        assert_eq!(loaded.find(&gpu_a), Some(&entry(gpu_a.clone(), Variant::WorkgroupTile)));
        assert_eq!(loaded.find(&gpu_b).map(|e| e.variant), Some(Variant::CompactTile));
        let new_driver = CacheKey {
            driver: "driver 2.0".into(),
            ..gpu_a.clone()
        };
        let new_kernels = CacheKey {
            kernels: "engine 0.0.0 conv2d.wgsl 0".into(),
            ..gpu_a.clone()
        };
        assert_eq!(loaded.find(&new_driver), None);
        assert_eq!(loaded.find(&new_kernels), None);

        // A new measurement of GPU A's kernels replaces its stale one.
        let mut cache = loaded;
        cache.insert(entry(new_kernels.clone(), Variant::RegisterTile));
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.find(&gpu_a), None);
        assert_eq!(cache.find(&new_kernels).map(|e| e.variant), Some(Variant::RegisterTile));
    }

    #[test]
    fn a_missing_or_corrupt_cache_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel-variants.json");
        assert!(Cache::load(&path).entries.is_empty());
        std::fs::write(&path, b"{\"entries\": [{\"adapter\": 3").unwrap();
        assert!(Cache::load(&path).entries.is_empty());
        std::fs::write(&path, b"{\"entries\": []}").unwrap();
        assert!(Cache::load(&path).entries.is_empty());
    }

    /// On the real adapter: a corrupt cache is measured again (every variant,
    /// the fastest chosen) and rewritten; the next choice comes from the cache.
    #[test]
    fn measures_every_variant_once_then_answers_from_the_cache() {
        let Some(gpu) = engine::testing::require_gpu(Gpu::new_blocking()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel-variants.json");
        std::fs::write(&path, b"not json").unwrap();
        let first = choose_with_cache(&gpu, Some(&path), 2).unwrap();
        let Source::Measured {
            path: Some(cached),
            step_ms,
        } = &first.source
        else {
            panic!("not measured: {first}");
        };
        assert_eq!(cached, &path);
        assert_eq!(step_ms.iter().map(|&(v, _)| v).collect::<Vec<_>>(), Variant::ALL);
        assert!(step_ms.iter().all(|&(_, ms)| ms.is_finite() && ms > 0.0), "{first}");
        assert_eq!(first.variant, fastest(step_ms));

        let second = choose_with_cache(&gpu, Some(&path), 2).unwrap();
        assert_eq!(second.variant, first.variant);
        assert_eq!(
            second.source,
            Source::Cached {
                path: path.clone(),
                step_ms: step_ms.clone()
            }
        );
        assert!(second.to_string().contains("measured earlier"), "{second}");
    }
}
