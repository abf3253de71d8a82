//! `resnet-native`: train, evaluate and benchmark ResNets on any GPU.

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "resnet-native",
    version,
    about = "Deep residual networks on any GPU through WebGPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the GPU adapter the engine would use.
    Info,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Info => {
            let gpu = engine::Gpu::new_blocking().context("opening the GPU")?;
            println!("adapter: {}", gpu.adapter);
            Ok(())
        }
    }
}
