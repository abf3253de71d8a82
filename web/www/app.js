// The drop-an-image page: loads the served model (or a dropped .safetensors)
// into the wasm package, which runs in a worker (worker.js) so the page stays
// responsive, and shows the top-5 classes of each image.
// Query parameters: ?backend=auto|webgpu|cpu, ?kernels=register-tile|workgroup-tile|compact-tile,
// ?model=<url of a .safetensors>.
const params = new URLSearchParams(location.search);
const options = { backend: params.get("backend") ?? "auto", kernels: params.get("kernels") ?? undefined };
const $ = (id) => document.getElementById(id);

const worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
const pending = new Map();
let nextId = 0;
worker.onmessage = ({ data }) => {
  const { resolve, reject } = pending.get(data.id);
  pending.delete(data.id);
  if (data.ok) resolve(data);
  else reject(new Error(data.message));
};
worker.onerror = (e) => showError(`The classifier's worker failed: ${e.message}`);
const call = (message, transfer = []) =>
  new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, ...message }, transfer);
  });

// The model as the page knows it: what the worker described, and classify().
const classifierOf = (info) => ({
  ...info,
  classify: async (image, k = 5) => (await call({ kind: "classify", image, k })).result,
});

// For tests and benchmarks: the classifier, the last result, the time from
// navigation to the first result, and a promise settled once the model loaded.
const app = (window.resnetApp = { classifier: null, last: null, firstResultMs: null });

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function describe(classifier) {
  const [c, h, w] = classifier.inputShape;
  const where = classifier.backend === "webgpu" ? `WebGPU on ${classifier.adapter}` : `CPU (${classifier.adapter})`;
  $("model").textContent =
    `${classifier.architecture}, ${classifier.classes.length} classes, ${w}×${h} ${c === 1 ? "grey" : "RGB"} input · ${where}` +
    ` · loaded in ${classifier.loadMs.toFixed(0)} ms`;
  $("model").dataset.backend = classifier.backend;
}

async function loadModel(source, name) {
  $("model").textContent = `Loading ${name}…`;
  try {
    const { info } = typeof source === "string"
      ? await call({ kind: "load", url: new URL(source, location.href).href, options })
      : await call({ kind: "load", bytes: source, options }, [source]);
    const classifier = classifierOf(info);
    app.classifier = classifier;
    $("error").hidden = true;
    describe(classifier);
  } catch (e) {
    showError(`${name}: ${e.message ?? e}`);
    if (app.classifier) describe(app.classifier);
    else $("model").textContent = "No model loaded.";
  }
}

function render(file, result) {
  const top = $("top");
  top.replaceChildren(...result.top.map((p) => {
    const li = document.createElement("li");
    li.dataset.label = p.label;
    li.dataset.index = p.index;
    li.dataset.probability = p.probability;
    const pct = (100 * p.probability).toFixed(p.probability < 0.001 ? 3 : 1);
    li.innerHTML = `<span class="label"></span><span class="bar"><span style="width:${100 * p.probability}%"></span></span><span class="pct">${pct}%</span>`;
    li.querySelector(".label").textContent = p.label;
    return li;
  }));
  const t = result.timings;
  $("timing").textContent = `${t.totalMs.toFixed(1)} ms (image ${t.preprocessMs.toFixed(1)} ms, network ${t.inferenceMs.toFixed(1)} ms) on ${result.backend === "webgpu" ? "WebGPU" : "the CPU"}`;
  $("name").textContent = file.name ?? "pasted image";
  $("result").dataset.backend = result.backend;
  $("result").dataset.state = "done";
}

async function handle(file) {
  if (!file) return;
  if (file.name?.toLowerCase().endsWith(".safetensors")) return loadModel(await file.arrayBuffer(), file.name);
  $("result").dataset.state = "busy";
  const preview = $("preview");
  URL.revokeObjectURL(preview.src);
  preview.hidden = false;
  preview.onerror = () => { preview.hidden = true; };
  preview.src = URL.createObjectURL(file);
  try {
    // An image given while the model loads waits for it.
    if (!app.classifier) await app.ready;
    if (!app.classifier) throw new Error("no model is loaded");
    const result = await app.classifier.classify(file, 5);
    app.last = result;
    app.firstResultMs ??= performance.now();
    $("error").hidden = true;
    render(file, result);
  } catch (e) {
    $("result").dataset.state = "empty";
    showError(`${file.name ?? "pasted image"}: ${e.message ?? e}`);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  handle(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => { handle(e.target.files[0]); e.target.value = ""; });
document.addEventListener("paste", (e) => {
  const item = [...e.clipboardData.items].find((i) => i.kind === "file");
  if (item) handle(item.getAsFile());
});

app.ready = loadModel(params.get("model") ?? "model.safetensors", "the model");
