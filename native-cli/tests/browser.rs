//! The real page in real Chromium: real CIFAR-10 test images, dropped on the
//! page served by `resnet-native serve`, get the same top-5 classes and
//! probabilities (within 1e-3) as `resnet-native classify` gives natively for
//! the same files — on WebGPU (SwiftShader, forced with `?backend=webgpu`) and,
//! with WebGPU unavailable, on the CPU path inside the wasm. With WebGPU
//! available the default `backend: "auto"` passes SwiftShader (a CPU
//! implementation of WebGPU) over for the CPU path, naming it. Bad files get a
//! clear message and the page keeps working; a torchvision-layout ResNet-18
//! dropped on the page replaces the model and classifies at 224x224, on both
//! paths, like `classify` does with that file; the page fetches nothing but
//! its own files.
//!
//! Needs the wasm package (`scripts/build-web.sh`), Chromium, Node with
//! `tests/browser/node_modules` (`npm ci` there) and `../shared`'s CIFAR-10;
//! without them it skips, saying why — but with `RESNET_REQUIRE_BROWSER=1`
//! (CI) a missing browser piece is a failure. Leaves a screenshot of the page at
//! `target/browser-test/page.png`.

use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use resnet_native::serve::{ServeArgs, Server};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let repo = repo();
    let checks = [
        (
            repo.join("web/pkg/resnet_web.js"),
            "the wasm package (run scripts/build-web.sh)",
        ),
        (
            repo.join("tests/browser/node_modules/playwright-core"),
            "playwright-core (run npm ci in tests/browser)",
        ),
        (chromium(), "Chromium (apt-get install chromium, or set CHROMIUM)"),
        (repo.join("weights/cifar10-resnet20.safetensors"), "the shipped model"),
    ];
    for (path, what) in checks {
        if !path.exists() {
            return Some(format!("{what}: {} not found", path.display()));
        }
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    None
}

/// Returns false (after saying why) when the test must skip.
fn prerequisites_present() -> bool {
    // Like every test that reads ../shared, a clone without it skips.
    let cifar = repo().join("../shared/data/cifar-10-batches-bin/test_batch.bin");
    if !cifar.is_file() {
        eprintln!(
            "skipping the browser test: CIFAR-10's test batch {} not found",
            cifar.display()
        );
        return false;
    }
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var("RESNET_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "RESNET_REQUIRE_BROWSER=1 but {why}"
    );
    eprintln!("skipping the browser test: {why}");
    false
}

/// Writes the test images: CIFAR-10 test images as PNG, plus one with
/// transparency, larger ones (up to 8000x8000) and a tiny one, all resized
/// the same way natively and in the page.
fn write_images(dir: &Path) -> Vec<PathBuf> {
    let batch = std::fs::read(repo().join("../shared/data/cifar-10-batches-bin/test_batch.bin")).unwrap();
    let cifar = |i: usize| {
        let record = &batch[i * 3073 + 1..(i + 1) * 3073];
        RgbImage::from_fn(32, 32, |x, y| {
            let at = (y * 32 + x) as usize;
            image::Rgb([record[at], record[1024 + at], record[2048 + at]])
        })
    };
    let mut paths = Vec::new();
    let mut save = |name: &str, image: DynamicImage| {
        let path = dir.join(name);
        image.save_with_format(&path, ImageFormat::Png).unwrap();
        paths.push(path);
    };
    for i in 0..6 {
        save(&format!("cifar-test-{i}.png"), DynamicImage::ImageRgb8(cifar(i)));
    }
    let ship = cifar(1);
    let transparent = RgbaImage::from_fn(32, 32, |x, y| {
        let [r, g, b] = ship.get_pixel(x, y).0;
        image::Rgba([r, g, b, (x * 8) as u8])
    });
    save("transparent.png", DynamicImage::ImageRgba8(transparent));
    let large = image::imageops::resize(&cifar(2), 257, 181, image::imageops::FilterType::Nearest);
    save("large-257x181.png", DynamicImage::ImageRgb8(large));
    save(
        "tiny-1x1.png",
        DynamicImage::ImageRgb8(RgbImage::from_pixel(1, 1, image::Rgb([30, 90, 200]))),
    );
    // A photo-sized monster: 8000x8000, a gradient so the resize has work to do.
    let huge = RgbImage::from_fn(8000, 8000, |x, y| image::Rgb([(x / 32) as u8, (y / 32) as u8, 128]));
    save("huge-8000x8000.png", DynamicImage::ImageRgb8(huge));
    paths
}

/// A torchvision-layout ImageNet ResNet-18 (random weights, non-trivial running
/// statistics) saved as torchvision's tensors would be: no metadata at all.
fn torchvision_resnet18(path: &Path) {
    use engine::model::{Architecture, Model, ModelSpec, imagenet_classes};
    use engine::network::resnet::{BottleneckStride, Shortcut};
    let spec = ModelSpec {
        architecture: Architecture::Imagenet {
            depth: 18,
            shortcut: Shortcut::B,
            bottleneck_stride: BottleneckStride::OnConv3x3,
        },
        class_names: imagenet_classes(),
        input: [3, 224, 224],
        normalization: engine::preprocess::Normalization::imagenet(),
    };
    let mut model = Model::init(spec, 18).unwrap();
    for (i, (mean, var)) in model.running.iter_mut().enumerate() {
        mean.iter_mut()
            .enumerate()
            .for_each(|(c, m)| *m = 0.1 * ((c + i) % 7) as f32 - 0.3);
        var.iter_mut()
            .enumerate()
            .for_each(|(c, v)| *v = 0.5 + 0.1 * ((c * 3 + i) % 11) as f32);
    }
    let ours = model.to_safetensors().unwrap();
    let file = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let bytes = safetensors::serialize(file.tensors(), None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// What `resnet-native classify --json` says about `images`.
fn native_top5(weights: &Path, images: &[PathBuf]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_resnet-native"))
        .arg("classify")
        .arg("--json")
        .arg("--weights")
        .arg(weights)
        .args(images)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    json.as_array().unwrap().iter().map(|r| r["top5"].clone()).collect()
}

fn drive(config: Value) -> Value {
    let output = Command::new("node")
        .arg(repo().join("tests/browser/drive.mjs"))
        .arg(config.to_string())
        .env("CHROMIUM", chromium())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(result.get("failure").is_none(), "the page failed: {result:#}");
    result
}

/// The browser's top-5 equals the native one: same classes in the same
/// order (two classes whose probabilities differ by under 1e-6 may swap: f32
/// sums on two adapters round differently), probabilities within 1e-3.
fn assert_same_top5(what: &str, browser: &Value, native: &Value) {
    let browser = browser
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no result: {browser}"));
    let native = native.as_array().unwrap();
    assert_eq!(browser.len(), 5, "{what}");
    let probability = |v: &Value| v["probability"].as_f64().unwrap();
    for (rank, (b, n)) in browser.iter().zip(native).enumerate() {
        let (pb, pn) = (probability(b), probability(n));
        assert!((pb - pn).abs() <= 1e-3, "{what}: rank {rank}: browser {pb} native {pn}");
        if b["index"] != n["index"] {
            let twin = native.iter().find(|m| m["index"] == b["index"]);
            let tie = twin.is_some_and(|m| (probability(m) - pn).abs() < 1e-6) || (pb - pn).abs() < 1e-6;
            assert!(tie, "{what}: browser {browser:?}, native {native:?}");
        } else {
            assert_eq!(b["label"], n["class"], "{what}");
        }
    }
}

#[test]
fn page_matches_native_classify_on_webgpu_and_on_the_cpu_path_and_auto_skips_swiftshader() {
    if !prerequisites_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = write_images(dir.path());
    let not_image = dir.path().join("notes.txt");
    std::fs::write(&not_image, "a text file, not an image").unwrap();
    let corrupt = dir.path().join("corrupt.png");
    let png = std::fs::read(&images[0]).unwrap();
    std::fs::write(&corrupt, &png[..png.len() / 2]).unwrap();
    let not_resnet = dir.path().join("bert.safetensors");
    let tensor = [0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &tensor).unwrap();
    std::fs::write(
        &not_resnet,
        safetensors::serialize([("embed.weight", view)], None).unwrap(),
    )
    .unwrap();

    let resnet18 = dir.path().join("resnet18-torchvision.safetensors");
    torchvision_resnet18(&resnet18);
    let resnet18_images = [images[0].clone(), images[8].clone()];
    let resnet18_native = native_top5(&resnet18, &resnet18_images);

    let weights = repo().join("weights/cifar10-resnet20.safetensors");
    let native = native_top5(&weights, &images);
    let server = Server::start(&ServeArgs {
        weights: weights.clone(),
        web: repo().join("web"),
        host: "127.0.0.1".into(),
        port: 0,
    })
    .unwrap();
    let artifacts = repo().join("target/browser-test");
    std::fs::create_dir_all(&artifacts).unwrap();

    // "auto" on SwiftShader: the CPU path, the adapter still named.
    let auto = drive(serde_json::json!({
        "url": server.url(),
        "webgpu": true,
        "images": images[..3],
    }));
    assert_eq!(auto["backend"], "cpu", "{auto:#}");
    let adapter = auto["adapter"].as_str().unwrap_or_default();
    assert!(adapter.contains("swiftshader"), "auto: {adapter}");
    for (shown, native) in auto["results"].as_array().unwrap().iter().zip(&native) {
        let what = format!("auto: {}", shown["name"]);
        assert_eq!(shown["backend"], "cpu", "{what}");
        assert_same_top5(&what, &shown["top"], native);
    }
    assert_eq!(auto["results"].as_array().unwrap().len(), 3);

    for (webgpu, backend) in [(true, "webgpu"), (false, "cpu")] {
        // WebGPU forced: "auto" would pass SwiftShader over.
        let query = if webgpu { "?backend=webgpu" } else { "" };
        let result = drive(serde_json::json!({
            "url": format!("{}{query}", server.url()),
            "webgpu": webgpu,
            "images": images,
            "bad": [not_image, corrupt, not_resnet],
            "drop": images[1],
            "early": images[3],
            "variants": images[2],
            "screenshot": if webgpu { Some(artifacts.join("page.png")) } else { None },
            // On WebGPU the ImageNet network also runs the compact tile's own
            // 7x7 stride-2 kernels (its stem) in Chromium's shader compiler.
            "model": {"path": resnet18, "architecture": "ResNet-18", "images": resnet18_images},
        }));
        assert_eq!(result["backend"], backend, "{result:#}");
        if webgpu {
            // The browser's choice of kernels for SwiftShader.
            let adapter = result["adapter"].as_str().unwrap_or_default();
            assert!(
                adapter.contains("swiftshader") && adapter.contains("CompactTile"),
                "{adapter}"
            );
        }
        for (shown, native) in result["results"].as_array().unwrap().iter().zip(&native) {
            let what = format!("{backend}: {}", shown["name"]);
            assert_eq!(shown["backend"], backend, "{what}");
            assert_same_top5(&what, &shown["top"], native);
        }
        assert_eq!(result["results"].as_array().unwrap().len(), images.len());
        // The 8000x8000 image takes seconds to decode, in the page's worker:
        // the page itself never stalls for long (generous for loaded machines).
        let gap = result["maxMainThreadGapMs"].as_f64().unwrap();
        assert!(gap < 1000.0, "{backend}: the page's main thread stalled for {gap} ms");

        let errors = result["errors"].as_array().unwrap();
        let expected = [
            ("notes.txt", "not an image format"),
            ("corrupt.png", "corrupt or truncated"),
            ("bert.safetensors", "not a ResNet this engine knows"),
        ];
        for (error, (name, needle)) in errors.iter().zip(expected) {
            let message = error["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} was accepted: {error}"));
            assert!(message.starts_with(name) && message.contains(needle), "{message}");
        }
        assert_eq!(errors.len(), expected.len());
        // After the bad files (a rejected model included) the page still classifies.
        assert_same_top5(
            &format!("{backend}: after errors"),
            &result["afterErrors"]["top"],
            &native[0],
        );
        assert_same_top5(&format!("{backend}: dropped"), &result["dropped"]["top"], &native[1]);
        // An image given to a fresh page before its model has loaded (as by
        // someone who drops one at once) is classified once it has.
        let early = &result["early"];
        assert_eq!(
            early["loadedFirst"], false,
            "{backend}: the model loaded first: {early}"
        );
        assert_eq!(early["backend"], backend, "{early}");
        assert_same_top5(&format!("{backend}: given while loading"), &early["top"], &native[3]);
        // Every input type of the API sees the same pixels.
        let variants = result["variants"].as_object().unwrap();
        for kind in ["ArrayBuffer", "Blob", "HTMLImageElement", "ImageBitmap", "ImageData"] {
            assert_same_top5(&format!("{backend}: {kind}"), &variants[kind], &native[2]);
        }
        assert_eq!(variants["backend"], backend);
        let wrong = variants["wrongType"].as_str().unwrap_or_default();
        assert!(wrong.contains("classify() takes ImageData"), "{wrong}");
        let absent = variants["absentUrl"].as_str().unwrap_or_default();
        assert!(absent.contains("cannot fetch absent.safetensors: HTTP 404"), "{absent}");

        assert_eq!(result["model"]["classes"], 1000, "{result:#}");
        assert_eq!(result["model"]["inputShape"], serde_json::json!([3, 224, 224]));
        let model_results = result["modelResults"].as_array().unwrap();
        assert_eq!(model_results.len(), resnet18_images.len());
        for (shown, native) in model_results.iter().zip(&resnet18_native) {
            assert_same_top5(
                &format!("{backend}: ResNet-18: {}", shown["name"]),
                &shown["top"],
                native,
            );
        }

        let url = server.url();
        for request in result["requests"].as_array().unwrap() {
            let request = request.as_str().unwrap();
            assert!(
                request.starts_with(&url) || request.starts_with("blob:"),
                "unexpected request {request}"
            );
        }
    }
    assert!(artifacts.join("page.png").is_file());
}

/// Every shader module, as a browser gets it (with subgroup loads too, where
/// the kernels have them), compiles in Chromium's WebGPU, and every entry
/// point makes a pipeline: its compiler (Tint) is stricter than naga, which
/// the native tests use (its uniformity analysis rejected barriers that naga
/// let through). Needs Chromium, Node and playwright-core, as the test above.
#[test]
fn every_shader_compiles_in_chromium_with_and_without_subgroup_loads() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("RESNET_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "RESNET_REQUIRE_BROWSER=1 but {why}"
        );
        eprintln!("skipping the shader check: {why}");
        return;
    }
    let mut modules: Vec<(String, String)> = std::fs::read_dir(repo().join("shaders"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "wgsl"))
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                // As the engine compiles it (see with_mirror_wgsl).
                engine::tensor::with_mirror_wgsl(std::fs::read_to_string(&path).unwrap()),
            )
        })
        .collect();
    assert!(modules.len() >= 9, "shaders/ holds {} modules", modules.len());
    let header = engine::kernel::BROWSER_SUBGROUPS_HEADER;
    // Each tiling's own module, as the engine compiles it where the device
    // has subgroups (the workgroup tile has no subgroup loads).
    for variant in [engine::Variant::RegisterTile, engine::Variant::CompactTile] {
        modules.push((
            format!("conv2d.wgsl, {variant:?} kernels with subgroup loads"),
            format!("{header}{}", engine::layers::conv2d::conv2d_source(variant, true)),
        ));
    }
    modules.push((
        "gemm.wgsl with subgroup loads".into(),
        format!("{header}{}", engine::layers::gemm::gemm_source(true, false)),
    ));
    // The register tile's texture-mirror variants (a page can ask for that
    // tile: `?kernels=register-tile`).
    modules.push((
        "gemm.wgsl with subgroup loads and mirrored operands".into(),
        format!("{header}{}", engine::layers::gemm::gemm_source(true, true)),
    ));
    modules.push((
        "batch_norm.wgsl with mirrored inputs".into(),
        engine::layers::batch_norm::batch_norm_source(true),
    ));
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("modules.json");
    let json: Vec<Value> = modules
        .iter()
        .map(|(name, code)| serde_json::json!({ "name": name, "code": code }))
        .collect();
    std::fs::write(&list, serde_json::to_string(&json).unwrap()).unwrap();
    let output = Command::new("node")
        .arg(repo().join("tests/browser/wgsl.mjs"))
        .arg(&list)
        .env("CHROMIUM", chromium())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        out["subgroups"], true,
        "the test needs an adapter with subgroups: {out}"
    );
    let mut failures = Vec::new();
    let mut pipelines = 0;
    for module in out["results"].as_array().unwrap() {
        let name = module["name"].as_str().unwrap();
        if !module["module"].is_null() {
            failures.push(format!("{name}: {}", module["module"]));
        }
        for (entry, error) in module["entries"].as_object().unwrap() {
            pipelines += 1;
            if !error.is_null() {
                failures.push(format!("{name} {entry}: {error}"));
            }
        }
    }
    assert!(failures.is_empty(), "Chromium rejected:\n{}", failures.join("\n"));
    assert!(pipelines >= 40, "only {pipelines} entry points found");
    eprintln!("{} modules, {pipelines} pipelines compiled in Chromium", modules.len());
}
