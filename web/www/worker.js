// Runs the classifier off the page's main thread, so that decoding a huge
// image or a CPU-path inference never freezes the page. Messages:
//   { id, kind: "load", url | bytes, options }  -> { id, ok, info }
//   { id, kind: "classify", image, k }          -> { id, ok, result }
// Failures answer { id, ok: false, message }.
import init, { Classifier } from "./pkg/resnet_web.js";

const ready = init();
let classifier = null;

const describe = (c) => ({
  architecture: c.architecture,
  classes: c.classes,
  inputShape: [...c.inputShape],
  backend: c.backend,
  adapter: c.adapter,
  loadMs: c.loadMs,
});

onmessage = async ({ data }) => {
  const { id, kind } = data;
  try {
    await ready;
    if (kind === "load") {
      const loaded = data.url
        ? await Classifier.fromUrl(data.url, data.options)
        : await Classifier.load(new Uint8Array(data.bytes), data.options);
      classifier?.free();
      classifier = loaded;
      postMessage({ id, ok: true, info: describe(loaded) });
    } else if (kind === "classify") {
      if (!classifier) throw new Error("no model is loaded");
      postMessage({ id, ok: true, result: await classifier.classify(data.image, data.k) });
    } else {
      throw new Error(`unknown request ${kind}`);
    }
  } catch (e) {
    postMessage({ id, ok: false, message: e?.message ?? String(e) });
  }
};
