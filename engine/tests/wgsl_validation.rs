//! Every WGSL file in `shaders/` parses and validates with naga under what
//! WebGPU allows without optional features, and is compiled into the engine.
//! Needs no GPU, so shader errors show up even where GPU tests are skipped.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use std::fs;
use std::path::{Path, PathBuf};

fn shaders_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders")
}

/// The WGSL files, found by listing the directory so new ones are covered
/// without editing this test.
fn wgsl_files() -> Vec<PathBuf> {
    let dir = shaders_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("reading shaders/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wgsl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .wgsl files in {}", dir.display());
    files
}

/// What a WebGPU device without optional features gives naga: wgpu derives the
/// capabilities from features (none requested) and downlevel flags, and a fully
/// WebGPU-compliant adapter has these two downlevel ones.
fn webgpu_capabilities() -> Capabilities {
    Capabilities::CUBE_ARRAY_TEXTURES | Capabilities::MULTISAMPLED_SHADING
}

/// `shaders/<file>`, for messages.
fn display_name(path: &Path) -> String {
    format!(
        "shaders/{}",
        path.file_name().expect("a listed file has a name").display()
    )
}

/// Parses and validates one file, returning its module or naga's message.
/// A file that reads texture mirrors is validated as the engine compiles it,
/// with `shaders/mirror.wgsl` appended (`engine::tensor::with_mirror_wgsl`).
fn validate(path: &Path) -> Result<naga::Module, String> {
    let name = display_name(path);
    let source = engine::tensor::with_mirror_wgsl(fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?);
    // Some validation errors carry no source span, so the name goes first too.
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| format!("{name}: {}", e.emit_to_string_with_path(&source, &name)))?;
    Validator::new(ValidationFlags::all(), webgpu_capabilities())
        .validate(&module)
        .map_err(|e| format!("{name}: {}", e.emit_to_string_with_path(&source, &name)))?;
    Ok(module)
}

#[test]
fn every_shader_parses_and_validates_for_webgpu() {
    let failures: Vec<String> = wgsl_files().iter().filter_map(|path| validate(path).err()).collect();
    assert!(failures.is_empty(), "invalid WGSL:\n{}", failures.join("\n"));
}

#[test]
fn some_shader_has_forward_and_backward_entry_points() {
    let has_both = wgsl_files().iter().any(|path| {
        let Ok(module) = validate(path) else { return false };
        let names: Vec<&str> = module.entry_points.iter().map(|ep| ep.name.as_str()).collect();
        names.iter().any(|n| n.ends_with("_forward")) && names.iter().any(|n| n.contains("_backward"))
    });
    assert!(
        has_both,
        "no shader file has both a *_forward and a *_backward entry point"
    );
}

/// All `.rs` files under `dir`, recursively.
fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
        let path = entry.expect("reading engine/src").path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The files named by `include_str!("...")` in one Rust source, resolved the
/// way the compiler does: relative to that source's directory.
fn included_files(source_path: &Path) -> Vec<PathBuf> {
    const MACRO: &str = "include_str!(";
    let text = fs::read_to_string(source_path).expect("reading a Rust source");
    let dir = source_path.parent().expect("a source file has a directory");
    text.match_indices(MACRO)
        .filter_map(|(at, _)| {
            // rustfmt may break the line after the parenthesis.
            let rest = text[at + MACRO.len()..].trim_start().strip_prefix('"')?;
            let literal = &rest[..rest.find('"')?];
            dir.join(literal).canonicalize().ok()
        })
        .collect()
}

#[test]
fn every_shader_is_included_by_the_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let included: Vec<PathBuf> = rust_sources(&src).iter().flat_map(|p| included_files(p)).collect();
    let orphans: Vec<String> = wgsl_files()
        .iter()
        .filter(|shader| !included.contains(&shader.canonicalize().expect("a listed shader exists")))
        .map(|shader| display_name(shader))
        .collect();
    assert!(
        orphans.is_empty(),
        "shaders not referenced by any include_str! in engine/src: {}",
        orphans.join(", ")
    );
}
