//! The library behind `resnet-native`: data sets, loaders and downloads, shared
//! by its subcommands and tested on their own.

pub mod data;
pub mod evaluate;
pub mod kernel_choice;
pub mod npy;
pub mod plot;
pub mod serve;
pub mod train;
