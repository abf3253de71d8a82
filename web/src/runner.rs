//! Where the network runs: WebGPU when a GPU adapter is available, else the
//! CPU inside the wasm module.

use crate::error;
use engine::model::{Model, ModelSpec};
use engine::network::inference::{FoldedNetwork, InferencePlan, SpecialisedLayers, cpu};
use engine::{Context, Gpu, Kernels, Variant};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsError, JsValue};
use wasm_bindgen_futures::JsFuture;

// wgpu 30 neither requests nor reports WebGPU's optional `subgroups` feature
// in browsers. While it opens the device, `requestDevice` asks for it where
// the adapter has it; the returned function puts `requestDevice` back and
// says whether the device got it.
#[wasm_bindgen(inline_js = r#"
export function ask_for_subgroups() {
  const proto = globalThis.GPUAdapter?.prototype;
  const original = proto?.requestDevice;
  let granted = false;
  if (original) {
    proto.requestDevice = function (descriptor = {}) {
      if (!this.features.has("subgroups") || !(this.info?.subgroupMinSize >= 4)) return original.call(this, descriptor);
      const requiredFeatures = [...(descriptor.requiredFeatures ?? []), "subgroups"];
      return original.call(this, { ...descriptor, requiredFeatures }).then((device) => {
        granted = device.features.has("subgroups");
        return device;
      });
    };
  }
  return () => {
    if (original) proto.requestDevice = original;
    return granted;
  };
}

export function next_task() {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
"#)]
extern "C" {
    fn ask_for_subgroups() -> js_sys::Function;
    /// Resolves in a later task of the event loop.
    pub(crate) fn next_task() -> js_sys::Promise;
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preference {
    Auto,
    WebGpu,
    Cpu,
}

/// Where a model will run, chosen before the model is known: opening the GPU
/// and creating the pipeline of the fused convolution (which browsers start
/// compiling at once) overlap with fetching and parsing the weights.
pub enum Backend {
    Gpu {
        context: Box<Context>,
        adapter: String,
    },
    /// Why the CPU is used.
    Cpu(String),
}

impl Backend {
    /// `Preference::Auto` takes WebGPU unless there is no adapter or the
    /// adapter is a CPU implementation of WebGPU (SwiftShader, or any the
    /// browser flags as a fallback): there the wasm CPU path is much faster
    /// (Chromium on SwiftShader, ResNet-20 batch 1: see web/README.md).
    /// `Preference::WebGpu` takes any adapter.
    pub async fn open(preference: Preference, variant: Option<Variant>) -> Result<Self, JsError> {
        if preference == Preference::Cpu {
            return Ok(Backend::Cpu("CPU requested".into()));
        }
        let info = adapter_info().await;
        if preference == Preference::Auto {
            match &info {
                // As below when wgpu finds no adapter.
                None => return Ok(Backend::Cpu("WebGPU unavailable".into())),
                Some(info) if info.cpu && CPU_PATH_BEATS_CPU_ADAPTERS => {
                    return Ok(Backend::Cpu(format!(
                        "WebGPU adapter {} is a CPU implementation, slower than the wasm CPU path",
                        info.description
                    )));
                }
                Some(_) => {}
            }
        }
        let subgroups_granted = ask_for_subgroups();
        let gpu = Gpu::new().await;
        let subgroups = subgroups_granted.call0(&JsValue::NULL).ok().and_then(|v| v.as_bool()) == Some(true);
        match gpu {
            Ok(gpu) => {
                let (description, cpu) = match info {
                    Some(info) => (info.description, info.cpu),
                    None => ("an unnamed WebGPU adapter".into(), false),
                };
                let variant = variant.unwrap_or_else(|| default_variant(&gpu, cpu));
                let with = if subgroups && variant == Variant::CompactTile {
                    ", subgroups"
                } else {
                    ""
                };
                let adapter = format!("{description} ({variant:?} kernels{with})");
                let kernels = Kernels::with_subgroups(&gpu.device, variant, subgroups);
                kernels.prepare_inference(&gpu.device);
                // Chromium sends WebGPU calls to its GPU process when a
                // submit (or a read-back) asks it to, between tasks: without
                // this the pipeline would wait there until the weights are
                // parsed and uploaded (about 100 ms of the ResNet-20 cold
                // start on SwiftShader) instead of compiling meanwhile.
                gpu.queue.submit([]);
                let _ = JsFuture::from(next_task()).await;
                let context = Box::new(Context { gpu, kernels });
                Ok(Backend::Gpu { context, adapter })
            }
            Err(e) if preference == Preference::WebGpu => Err(error("WebGPU is unavailable", e)),
            // The engine's error suggests installing lavapipe: true natively,
            // noise in a browser.
            Err(_) => Ok(Backend::Cpu("WebGPU unavailable".into())),
        }
    }

    /// Creates the pipelines of the network whose safetensors header is
    /// `header` ([`ModelSpec::from_header`]), so that the browser compiles
    /// them while the weights download. A header it cannot read is left for
    /// the load to report.
    pub fn prepare_network(&self, header: &[u8]) {
        let Backend::Gpu { context, .. } = self else { return };
        let Ok(Some(spec)) = ModelSpec::from_header(header) else {
            return;
        };
        let Ok(graph) = spec.graph(BATCH) else { return };
        InferencePlan::prepare_kernels(context.device(), &context.kernels, &graph, FIRST_PLAN);
        // Chromium sends them to its GPU process at a submit (see `open`).
        context.queue().submit([]);
    }
}

/// Images per inference.
const BATCH: usize = 1;

/// The convolutions that the plan answering the first classification runs
/// with specialised kernels: those whose pipelines' compile that run
/// repays. [`Runner::upgrade`] swaps in the plan with
/// [`SpecialisedLayers::All`].
const FIRST_PLAN: SpecialisedLayers = SpecialisedLayers::Wide;

/// Whether `backend: "auto"` prefers the wasm CPU path to a CPU
/// implementation of WebGPU. Measured in headless Chromium on SwiftShader
/// (scripts/bench-web.sh; figures in web/README.md).
const CPU_PATH_BEATS_CPU_ADAPTERS: bool = true;

/// Both run the network with batch norm folded into the convolutions.
pub enum Runner {
    /// Every pipeline and buffer created at load. `faster`: the folded
    /// network, kept where the plan with specialised kernels wherever they
    /// are faster once compiled differs from `plan`, until
    /// [`Runner::upgrade`] builds it.
    Gpu {
        context: Box<Context>,
        plan: InferencePlan,
        faster: Option<Box<FoldedNetwork>>,
    },
    /// Plain loops in the wasm module: needs nothing from the browser.
    Cpu { network: FoldedNetwork },
}

impl Runner {
    /// The runner of `model` on `backend`, its backend name and a
    /// description of the adapter (or of why there is none).
    pub fn new(model: &Model, backend: Backend) -> Result<(Self, &'static str, String), JsError> {
        let network = FoldedNetwork::new(model, BATCH).map_err(|e| error("unsupported model", e))?;
        match backend {
            Backend::Gpu { context, adapter } => {
                let plan = InferencePlan::from_folded(
                    context.device(),
                    context.queue(),
                    &context.kernels,
                    &network,
                    FIRST_PLAN,
                )
                .map_err(|e| error("cannot prepare the network on the GPU", e))?;
                let graph = model.spec.graph(BATCH).map_err(|e| error("unsupported model", e))?;
                let differ = InferencePlan::plans_differ(
                    context.device(),
                    &context.kernels,
                    &graph,
                    FIRST_PLAN,
                    SpecialisedLayers::All,
                );
                let faster = differ.then(|| Box::new(network));
                Ok((Runner::Gpu { context, plan, faster }, "webgpu", adapter))
            }
            Backend::Cpu(why) => Ok((Runner::Cpu { network }, "cpu", why)),
        }
    }

    /// Whether [`Runner::upgrade`] has a faster plan to build.
    pub fn can_upgrade(&self) -> bool {
        matches!(self, Runner::Gpu { faster: Some(_), .. })
    }

    /// Swaps in the plan with specialised kernels wherever they are faster
    /// once compiled (ResNet-20's convolutions on SwiftShader: Winograd,
    /// 0.8x the page's latency, and the 3-tap stride-2 GEMM),
    /// whose pipelines the first plan left out to answer sooner: a page calls
    /// it after its first result, and the browser compiles them while the
    /// page shows it (a classification meanwhile waits for them). On an
    /// error the first plan stays.
    pub fn upgrade(&mut self) -> Result<(), JsError> {
        if let Runner::Gpu { context, plan, faster } = self
            && let Some(network) = faster.take()
        {
            let device = context.device();
            *plan = InferencePlan::from_folded(
                device,
                context.queue(),
                &context.kernels,
                &network,
                SpecialisedLayers::All,
            )
            .map_err(|e| error("cannot prepare the faster plan on the GPU", e))?;
        }
        Ok(())
    }

    /// Logits of one normalised CHW image.
    pub async fn logits(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        match self {
            Runner::Gpu { context, plan, .. } => plan
                .logits(context.device(), context.queue(), input)
                .await
                .map_err(|e| error("the GPU failed", e)),
            Runner::Cpu { network } => Ok(cpu::infer(network, input)),
        }
    }
}

/// The kernels for a browser's adapter. Register tiles suit CPU adapters
/// natively (lavapipe), but SwiftShader's shader compiler does not finish them
/// in minutes; compact tiles compile in well under a second there and run
/// faster than workgroup tiles, which are what real GPUs want. `cpu_adapter`:
/// the browser's adapter info names a CPU implementation; wgpu also reports
/// the browser's fallback adapter as a CPU.
fn default_variant(gpu: &Gpu, cpu_adapter: bool) -> Variant {
    if cpu_adapter || gpu.adapter.is_cpu() {
        Variant::CompactTile
    } else {
        Variant::WorkgroupTile
    }
}

/// What the browser says about its WebGPU adapter (wgpu's adapter info is
/// nearly empty on the web, the browser's `GPUAdapterInfo` is not).
struct AdapterInfo {
    /// "vendor architecture description".
    description: String,
    /// A CPU implementation of WebGPU: SwiftShader (vendor "google",
    /// architecture "swiftshader"), or an adapter flagged `isFallbackAdapter`.
    cpu: bool,
}

/// The browser's default WebGPU adapter, if it has one.
async fn adapter_info() -> Option<AdapterInfo> {
    let get = |target: &JsValue, key: &str| js_sys::Reflect::get(target, &key.into()).unwrap_or(JsValue::UNDEFINED);
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let request: js_sys::Function = get(&gpu, "requestAdapter").dyn_into().ok()?;
    let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = get(&adapter, "info");
    let field = |key: &str| get(&info, key).as_string().unwrap_or_default();
    let parts: Vec<String> = ["vendor", "architecture", "description"]
        .iter()
        .map(|key| field(key))
        .filter(|part| !part.is_empty())
        .collect();
    let description = if parts.is_empty() {
        "an unnamed WebGPU adapter".into()
    } else {
        parts.join(" ")
    };
    // `isFallbackAdapter` moved from GPUAdapter to GPUAdapterInfo.
    let fallback = get(&info, "isFallbackAdapter").as_bool() == Some(true)
        || get(&adapter, "isFallbackAdapter").as_bool() == Some(true);
    let swiftshader = (field("vendor") == "google" && field("architecture") == "swiftshader")
        || description.to_lowercase().contains("swiftshader");
    Some(AdapterInfo {
        description,
        cpu: fallback || swiftshader,
    })
}
