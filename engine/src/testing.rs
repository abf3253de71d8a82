//! Helpers shared by the tests of every layer: a GPU that is never skipped
//! silently, tolerance checks and finite differences.

use crate::{Context, EngineError, Gpu};
use std::sync::OnceLock;

/// Setting this variable to `1` lets GPU tests skip when no adapter exists.
/// Without it, a missing adapter fails them.
pub const SKIP_ENV: &str = "RESNET_SKIP_GPU_TESTS";

/// Turns a failed adapter request into a test failure, unless [`SKIP_ENV`] asks
/// to skip, in which case it says so and returns `None`.
pub fn require_gpu<T>(result: Result<T, EngineError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            eprintln!("SKIPPED: no GPU ({err}); {SKIP_ENV}=1 allows skipping");
            None
        }
        Err(err) => panic!("GPU tests need an adapter: {err}. Set {SKIP_ENV}=1 to skip them explicitly."),
    }
}

/// One context (device and pipelines) shared by all tests of a test binary, so
/// pipelines compile once.
pub fn context() -> Option<&'static Context> {
    static CONTEXT: OnceLock<Option<Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| require_gpu(pollster::block_on(Gpu::new())).map(Context::new))
        .as_ref()
}

/// Asserts `|got - want| <= atol + rtol * |want|` element-wise (NaN never
/// passes), naming the worst element when it fails.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} != expected {}",
        got.len(),
        want.len()
    );
    let excess = |g: f32, w: f64| {
        let e = (g as f64 - w).abs() - (atol + rtol * w.abs());
        if e.is_nan() { f64::INFINITY } else { e }
    };
    let mut bad = 0;
    let mut worst = (0, f64::NEG_INFINITY);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = excess(g, w);
        if e > 0.0 {
            bad += 1;
            if e > worst.1 {
                worst = (i, e);
            }
        }
    }
    let i = worst.0;
    assert!(
        bad == 0,
        "{what}: {bad} of {} elements out of tolerance (atol {atol}, rtol {rtol}); worst at {i}: got {}, expected {}",
        got.len(),
        got[i],
        want[i]
    );
}

/// Central finite-difference gradient of a scalar function.
pub fn numerical_gradient(f: impl Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + eps;
            let plus = f(&probe);
            probe[i] = x[i] - eps;
            let minus = f(&probe);
            probe[i] = x[i];
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

/// Asserts that an analytic gradient matches finite differences (f64).
#[track_caller]
pub fn assert_gradient(what: &str, f: impl Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64]) {
    let numeric = numerical_gradient(f, x, 1e-5);
    let analytic: Vec<f32> = analytic.iter().map(|&v| v as f32).collect();
    assert_close(what, &analytic, &numeric, 1e-6, 1e-4);
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
