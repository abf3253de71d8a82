//! One module per layer family: dispatch builders, CPU reference, tests.

pub mod relu;
