//! Portable WebGPU compute engine for deep residual networks.
//!
//! Every ResNet layer has, in one place:
//! - its WGSL kernels, forward and backward, in `shaders/<layer>.wgsl`;
//! - its Rust dispatch builders and its plain-Rust CPU reference (`cpu` submodule,
//!   f64, independent of the WGSL) in `engine/src/layers/<layer>.rs`;
//! - its tests next to it, comparing GPU against reference and reference
//!   gradients against finite differences.
//!
//! Device setup ([`gpu`]) is kept apart from execution: dispatch builders take the
//! device, so the same code runs in tests, natively and in the browser.

pub mod classify;
pub mod error;
pub mod gpu;
pub mod kernel;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod network;
pub mod preprocess;
pub mod rng;
pub mod tensor;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use error::EngineError;
pub use gpu::{AdapterSummary, Gpu};
pub use kernel::{Dispatch, Kernel};
pub use kernels::{Context, Kernels, Variant, tiled_kernels_fingerprint};
pub use tensor::Tensor;
