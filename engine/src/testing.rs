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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_adapter_fails_gpu_tests_unless_skipping_is_asked_for() {
        // No backend at all: adapter creation must fail with a typed error.
        let result = pollster::block_on(Gpu::with_backends(wgpu::Backends::empty()));
        assert!(matches!(result, Err(EngineError::NoAdapter(_))), "expected NoAdapter");
        let skipping = std::env::var(SKIP_ENV).as_deref() == Ok("1");
        let error = result.err().expect("checked above");
        let outcome = std::panic::catch_unwind(|| require_gpu::<()>(Err(error)).is_none());
        match outcome {
            Ok(skipped) => assert!(skipping && skipped, "a missing adapter must fail unless {SKIP_ENV}=1"),
            Err(_) => assert!(!skipping, "with {SKIP_ENV}=1 a missing adapter must skip, not fail"),
        }
    }

    #[test]
    fn assert_close_rejects_values_out_of_tolerance_and_nan() {
        assert_close("equal", &[1.0, 2.0], &[1.0, 2.0], 0.0, 0.0);
        assert_close("within", &[1.001], &[1.0], 0.0, 2e-3);
        for (got, want) in [(1.01f32, 1.0f64), (f32::NAN, 1.0)] {
            let failed = std::panic::catch_unwind(|| assert_close("x", &[got], &[want], 1e-3, 1e-3)).is_err();
            assert!(failed, "{got} vs {want} should fail");
        }
    }

    #[test]
    fn finite_differences_recover_a_known_gradient() {
        // f(x) = sum x_i^3 has gradient 3 x_i^2.
        let x = [0.5, -1.0, 2.0];
        let grad = numerical_gradient(|x| x.iter().map(|v| v * v * v).sum(), &x, 1e-5);
        let want: Vec<f64> = x.iter().map(|v| 3.0 * v * v).collect();
        let grad: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
        assert_close("d/dx x^3", &grad, &want, 1e-6, 1e-6);
    }
}
