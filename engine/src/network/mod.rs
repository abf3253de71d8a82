//! Networks: a graph of layer ops (`graph`), the paper's architectures built
//! as graphs (`resnet`), and two executors of the same graph — the GPU plan
//! (`plan`) and the f64 CPU reference (`cpu`); plus the fast inference path
//! (`inference`), batch norm folded into the convolutions, on GPU and CPU.

pub mod cpu;
pub mod graph;
pub mod inference;
pub mod plan;
pub mod resnet;

pub use graph::{Graph, GraphBuilder};
pub use inference::{FoldedNetwork, InferencePlan, SpecialisedLayers};
pub use plan::{Plan, StepStats};
pub use resnet::cifar_resnet;
#[cfg(test)]
mod tests;
