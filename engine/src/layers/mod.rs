//! One module per layer family: dispatch builders, CPU reference, tests.

pub mod batch_norm;
pub mod conv2d;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod residual;
pub mod sgd;
