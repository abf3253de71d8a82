//! Where the network runs: WebGPU when an adapter is available, else the CPU
//! inside the wasm module.

use crate::error;
use engine::model::Model;
use engine::network::inference::{FoldedNetwork, InferencePlan, cpu};
use engine::{Context, Gpu, Kernels, Variant};
use wasm_bindgen::{JsCast, JsError, JsValue};
use wasm_bindgen_futures::JsFuture;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Preference {
    Auto,
    WebGpu,
    Cpu,
}

/// Both run the network with batch norm folded into the convolutions.
pub enum Runner {
    /// Every pipeline and buffer created at load.
    Gpu { context: Box<Context>, plan: InferencePlan },
    /// Plain loops in the wasm module: needs nothing from the browser.
    Cpu { network: FoldedNetwork },
}

impl Runner {
    /// The runner, its backend name and a description of the adapter (or of
    /// why there is none).
    pub async fn new(
        model: &Model,
        preference: Preference,
        variant: Option<Variant>,
    ) -> Result<(Self, &'static str, String), JsError> {
        let network = FoldedNetwork::new(model, 1).map_err(|e| error("unsupported model", e))?;
        if preference != Preference::Cpu {
            match Gpu::new().await {
                Ok(gpu) => {
                    // Register-tile kernels suit CPU adapters natively (lavapipe),
                    // but SwiftShader's shader compiler does not finish them in
                    // minutes; workgroup tiles compile in seconds there and are
                    // what real GPUs want.
                    let variant = variant.unwrap_or(Variant::WorkgroupTile);
                    let adapter = format!("{} ({variant:?} kernels)", describe_adapter().await);
                    let kernels = Kernels::new(&gpu.device, variant);
                    let context = Box::new(Context { gpu, kernels });
                    let plan = InferencePlan::from_folded(context.device(), &context.kernels, &network)
                        .map_err(|e| error("cannot prepare the network on the GPU", e))?;
                    return Ok((Runner::Gpu { context, plan }, "webgpu", adapter));
                }
                Err(e) if preference == Preference::WebGpu => return Err(error("WebGPU is unavailable", e)),
                // The engine's error suggests installing lavapipe: true natively,
                // noise in a browser.
                Err(_) => return Ok((Runner::Cpu { network }, "cpu", "WebGPU unavailable".into())),
            }
        }
        Ok((Runner::Cpu { network }, "cpu", "CPU requested".into()))
    }

    /// Logits of one normalised CHW image.
    pub async fn logits(&self, input: &[f32]) -> Result<Vec<f32>, JsError> {
        match self {
            Runner::Gpu { context, plan } => plan
                .logits(context.device(), context.queue(), input)
                .await
                .map_err(|e| error("the GPU failed", e)),
            Runner::Cpu { network } => Ok(cpu::infer(network, input)),
        }
    }
}

/// "vendor architecture description" of the browser's WebGPU adapter: wgpu's
/// adapter info is empty on the web, the browser's `GPUAdapterInfo` is not.
async fn describe_adapter() -> String {
    let get = |target: &JsValue, key: &str| js_sys::Reflect::get(target, &key.into()).unwrap_or(JsValue::UNDEFINED);
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    let info = async {
        let request: js_sys::Function = get(&gpu, "requestAdapter").dyn_into().ok()?;
        let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
        let adapter = JsFuture::from(promise).await.ok()?;
        let info = get(&adapter, "info");
        let parts: Vec<String> = ["vendor", "architecture", "description"]
            .iter()
            .filter_map(|key| get(&info, key).as_string())
            .filter(|part| !part.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    };
    info.await.unwrap_or_else(|| "an unnamed WebGPU adapter".into())
}
