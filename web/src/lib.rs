//! The engine as a wasm-bindgen package: load a ResNet from safetensors and
//! classify images on the visitor's GPU through WebGPU, or, where WebGPU is
//! missing or only a CPU implementation of it (SwiftShader), on the CPU inside
//! the wasm module. The image goes through
//! `engine::classify`, exactly as in `resnet-native classify`.
//!
//! ```js
//! import init, { Classifier } from "resnet-web";
//! await init();
//! const classifier = await Classifier.fromUrl("model.safetensors");
//! const { top } = await classifier.classify(fileOrImageElement);
//! ```

mod runner;

use engine::classify;
use engine::model::Model;
use futures_util::lock::Mutex;
use runner::{Backend, Runner};
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** What can be classified: pixels, a decoded image, or an encoded file (PNG, JPEG, GIF, BMP, WebP). */
export type ImageInput = ImageData | HTMLImageElement | ImageBitmap | Blob | ArrayBuffer | Uint8Array;

export interface Prediction {
  /** Class name. */
  label: string;
  /** Class index in the model's output. */
  index: number;
  probability: number;
}

export interface Classification {
  /** Most probable first. */
  top: Prediction[];
  /** Where the network ran. */
  backend: "webgpu" | "cpu";
  /** Milliseconds: reading and resizing the image, running the network, both. */
  timings: { preprocessMs: number; inferenceMs: number; totalMs: number };
}

export interface LoadOptions {
  /**
   * "auto" (default): WebGPU when the browser has an adapter that is not a CPU
   * implementation of WebGPU (SwiftShader, a fallback adapter), else the CPU path
   * inside the wasm module, which is faster than such adapters. "webgpu" takes
   * any adapter (and fails without one); "cpu" never touches WebGPU.
   */
  backend?: "auto" | "webgpu" | "cpu";
  /** GPU kernel family; by default "compact-tile" on CPU adapters (SwiftShader), else "workgroup-tile" (see the package README). */
  kernels?: "register-tile" | "workgroup-tile" | "compact-tile";
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn now_ms() -> f64;
}

// Reads the file at `url` as it arrives: `header` resolves with its first
// bytes as soon as they hold a whole safetensors header (null if they never
// do), `body` with all of it (or rejects with why not).
#[wasm_bindgen(inline_js = r#"
export function fetch_with_header(url) {
  let headerFound;
  const header = new Promise((resolve) => (headerFound = resolve));
  const body = (async () => {
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
      let bytes = new Uint8Array(Number(response.headers.get("content-length")) || 1 << 20);
      let size = 0;
      let need = Infinity;
      const reader = response.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (size + value.length > bytes.length) {
          const grown = new Uint8Array(Math.max(2 * bytes.length, size + value.length));
          grown.set(bytes.subarray(0, size));
          bytes = grown;
        }
        bytes.set(value, size);
        size += value.length;
        if (need === Infinity && size >= 8) need = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true));
        if (size >= need) {
          headerFound(bytes.slice(0, need));
          need = NaN;
        }
      }
      return bytes.subarray(0, size);
    } finally {
      headerFound(null);
    }
  })();
  return { header, body };
}
"#)]
extern "C" {
    fn fetch_with_header(url: &str) -> js_sys::Object;
}

/// A download started by [`Download::start`].
struct Download {
    url: String,
    header: js_sys::Promise,
    body: js_sys::Promise,
}

impl Download {
    fn start(url: &str) -> Self {
        let download = fetch_with_header(url);
        let promise = |key: &str| {
            js_sys::Reflect::get(&download, &key.into())
                .expect("fetch_with_header returns both promises")
                .unchecked_into()
        };
        Self {
            url: url.to_string(),
            header: promise("header"),
            body: promise("body"),
        }
    }

    /// The file's first bytes, once they hold its safetensors header.
    async fn header(&self) -> Option<Vec<u8>> {
        let header = JsFuture::from(self.header.clone()).await.ok()?;
        header.dyn_ref::<js_sys::Uint8Array>().map(js_sys::Uint8Array::to_vec)
    }

    /// All of the file.
    async fn body(self) -> Result<Vec<u8>, JsError> {
        let body = JsFuture::from(self.body)
            .await
            .map_err(|e| error(&format!("cannot fetch {}", self.url), js_message(&e)))?;
        Ok(body.unchecked_into::<js_sys::Uint8Array>().to_vec())
    }
}

/// A loaded model, ready to classify: every buffer allocated and every GPU
/// pipeline created by [`Classifier::load`].
#[wasm_bindgen]
pub struct Classifier {
    inner: Rc<Inner>,
}

struct Inner {
    model: Model,
    /// One classification at a time: they share the input and read-back buffers.
    runner: Mutex<Runner>,
    backend: &'static str,
    adapter: String,
    load_ms: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Prediction {
    label: String,
    index: usize,
    probability: f64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Timings {
    preprocess_ms: f64,
    inference_ms: f64,
    total_ms: f64,
}

#[derive(serde::Serialize)]
struct Classification {
    top: Vec<Prediction>,
    backend: &'static str,
    timings: Timings,
}

fn error(context: &str, e: impl std::fmt::Display) -> JsError {
    JsError::new(&format!("{context}: {e}"))
}

impl Classifier {
    /// The classifier of the weights in `bytes` on `backend`; `start` is when
    /// loading started (for `loadMs`).
    fn load_on(bytes: &[u8], backend: Backend, start: f64) -> Result<Classifier, JsError> {
        let model = Model::load(bytes).map_err(|e| error("cannot load these weights", e))?;
        let (runner, backend, adapter) = Runner::new(&model, backend)?;
        Ok(Classifier {
            inner: Rc::new(Inner {
                model,
                runner: Mutex::new(runner),
                backend,
                adapter,
                load_ms: now_ms() - start,
            }),
        })
    }
}

#[wasm_bindgen]
impl Classifier {
    /// Loads a ResNet from the bytes of a `.safetensors` file: one written by
    /// `resnet-native`, or a torchvision-layout ResNet (e.g. ResNet-18/50 with
    /// ImageNet's 1000 classes), recognised from its tensors.
    pub async fn load(
        bytes: Vec<u8>,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] options: JsValue,
    ) -> Result<Classifier, JsError> {
        let start = now_ms();
        let (preference, variant) = load_options(&options)?;
        let backend = Backend::open(preference, variant).await?;
        Self::load_on(&bytes, backend, start)
    }

    /// Fetches a `.safetensors` file and loads it (see [`Classifier::load`]),
    /// opening the GPU while the file downloads, and creating the network's
    /// pipelines (which the browser then compiles) once its header is there.
    #[wasm_bindgen(js_name = fromUrl)]
    pub async fn from_url(
        url: String,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] options: JsValue,
    ) -> Result<Classifier, JsError> {
        let (preference, variant) = load_options(&options)?;
        let download = Download::start(&url);
        let (header, backend) = futures_util::future::join(download.header(), Backend::open(preference, variant)).await;
        if let (Some(header), Ok(backend)) = (header, &backend) {
            backend.prepare_network(&header);
        }
        let (bytes, backend) = (download.body().await?, backend?);
        // Load time as for `load`: from the bytes being there.
        Self::load_on(&bytes, backend, now_ms())
    }

    /// Classifies one image, resolving to its `k` most probable classes
    /// (default 5). Calls made while one is running wait their turn.
    #[wasm_bindgen(unchecked_return_type = "Promise<Classification>")]
    pub fn classify(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ImageInput")] image: JsValue,
        k: Option<u32>,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let result = inner.classify(image, k.unwrap_or(5) as usize).await?;
            if inner.runner.lock().await.can_upgrade() {
                wasm_bindgen_futures::spawn_local(inner.clone().upgrade());
            }
            serde_wasm_bindgen::to_value(&result).map_err(JsValue::from)
        })
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.inner.backend.into()
    }

    /// The WebGPU adapter in use and its kernels, or why the CPU is used
    /// (naming the WebGPU adapter passed over, if any).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.inner.adapter.clone()
    }

    /// "ResNet-20", "ResNet-50", ...
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.inner.model.spec.architecture.name()
    }

    /// Class names in output order.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> Vec<String> {
        self.inner.model.spec.class_names.clone()
    }

    /// `[channels, height, width]` the images are resized to.
    #[wasm_bindgen(getter, js_name = inputShape)]
    pub fn input_shape(&self) -> Vec<u32> {
        self.inner.model.spec.input.iter().map(|&d| d as u32).collect()
    }

    /// Milliseconds [`Classifier::load`] took (parsing, device, pipelines,
    /// buffers); for [`Classifier::from_url`], from the end of the download
    /// (the device opens during it).
    #[wasm_bindgen(getter, js_name = loadMs)]
    pub fn load_ms(&self) -> f64 {
        self.inner.load_ms
    }
}

impl Inner {
    /// [`Runner::upgrade`], a task after the result that prompted it, so that
    /// the result reaches the page first.
    async fn upgrade(self: Rc<Self>) {
        let _ = JsFuture::from(runner::next_task()).await;
        if let Err(e) = self.runner.lock().await.upgrade() {
            web_sys::console::warn_1(&JsValue::from(e));
        }
    }

    async fn classify(&self, image: JsValue, k: usize) -> Result<Classification, JsError> {
        let start = now_ms();
        let rgb = read_image(image).await?;
        let input = classify::model_input(&rgb, &self.model.spec).map_err(|e| error("cannot use this image", e))?;
        let runner = self.runner.lock().await;
        let ready = now_ms();
        let logits = runner.logits(&input).await?;
        let end = now_ms();
        let names = &self.model.spec.class_names;
        let top = classify::top_k(&classify::softmax(&logits), k)
            .into_iter()
            .map(|(index, probability)| Prediction {
                label: names[index].clone(),
                index,
                probability,
            })
            .collect();
        Ok(Classification {
            top,
            backend: self.backend,
            timings: Timings {
                preprocess_ms: ready - start,
                inference_ms: end - ready,
                total_ms: end - start,
            },
        })
    }
}

fn load_options(options: &JsValue) -> Result<(runner::Preference, Option<engine::Variant>), JsError> {
    let field = |name: &str| {
        if options.is_object() {
            js_sys::Reflect::get(options, &name.into()).unwrap_or(JsValue::UNDEFINED)
        } else {
            JsValue::UNDEFINED
        }
    };
    let (backend, kernels) = (field("backend"), field("kernels"));
    let preference = match backend.as_string().as_deref() {
        None if backend.is_undefined() => runner::Preference::Auto,
        Some("auto") => runner::Preference::Auto,
        Some("webgpu") => runner::Preference::WebGpu,
        Some("cpu") => runner::Preference::Cpu,
        _ => return Err(JsError::new(r#"options.backend must be "auto", "webgpu" or "cpu""#)),
    };
    let variant = match kernels.as_string().as_deref() {
        None if kernels.is_undefined() => None,
        Some("register-tile") => Some(engine::Variant::RegisterTile),
        Some("workgroup-tile") => Some(engine::Variant::WorkgroupTile),
        Some("compact-tile") => Some(engine::Variant::CompactTile),
        _ => {
            return Err(JsError::new(
                r#"options.kernels must be "register-tile", "workgroup-tile" or "compact-tile""#,
            ));
        }
    };
    Ok((preference, variant))
}

/// The pixels of any [`ImageInput`] as RGB, transparency onto white.
async fn read_image(image: JsValue) -> Result<image::RgbImage, JsError> {
    let unreadable = |e| error("cannot read this image", e);
    if let Some(data) = image.dyn_ref::<web_sys::ImageData>() {
        return classify::from_rgba(data.data().0, data.width(), data.height()).map_err(unreadable);
    }
    if let Some(element) = image.dyn_ref::<web_sys::HtmlImageElement>() {
        JsFuture::from(element.decode())
            .await
            .map_err(|e| error("the image element did not load", js_message(&e)))?;
        return pixels_of(element.as_ref(), element.natural_width(), element.natural_height());
    }
    if let Some(bitmap) = image.dyn_ref::<web_sys::ImageBitmap>() {
        return pixels_of(bitmap.as_ref(), bitmap.width(), bitmap.height());
    }
    let bytes = if let Some(array) = image.dyn_ref::<js_sys::Uint8Array>() {
        array.to_vec()
    } else if image.is_instance_of::<js_sys::ArrayBuffer>() {
        js_sys::Uint8Array::new(&image).to_vec()
    } else if let Some(blob) = image.dyn_ref::<web_sys::Blob>() {
        let buffer = JsFuture::from(blob.array_buffer())
            .await
            .map_err(|e| error("cannot read the file", js_message(&e)))?;
        js_sys::Uint8Array::new(&buffer).to_vec()
    } else {
        return Err(JsError::new(
            "classify() takes ImageData, HTMLImageElement, ImageBitmap, Blob/File, ArrayBuffer or Uint8Array",
        ));
    };
    classify::decode(&bytes).map_err(unreadable)
}

/// Draws a decoded image on a canvas of its own size to read its pixels.
fn pixels_of(source: &JsValue, width: u32, height: u32) -> Result<image::RgbImage, JsError> {
    let fail = |e: JsValue| error("cannot read the image's pixels", js_message(&e));
    if width == 0 || height == 0 {
        return Err(JsError::new("the image has no pixels (0x0); has it loaded?"));
    }
    let canvas = web_sys::OffscreenCanvas::new(width, height).map_err(fail)?;
    let context: web_sys::OffscreenCanvasRenderingContext2d = canvas
        .get_context("2d")
        .map_err(fail)?
        .ok_or_else(|| JsError::new("no 2D canvas context"))?
        .unchecked_into();
    let drawn = if let Some(element) = source.dyn_ref::<web_sys::HtmlImageElement>() {
        context.draw_image_with_html_image_element(element, 0.0, 0.0)
    } else {
        context.draw_image_with_image_bitmap(source.unchecked_ref(), 0.0, 0.0)
    };
    drawn.map_err(fail)?;
    let data = context
        .get_image_data(0.0, 0.0, width.into(), height.into())
        .map_err(fail)?;
    classify::from_rgba(data.data().0, width, height).map_err(|e| error("cannot read this image", e))
}

/// The message of a JS exception (or its string form).
fn js_message(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}
