//! kiln: builds minimal, immutable, OSTree-based Debian container-host operating systems.
//!
//! The pipeline: [`recipe`] → [`compose`] → [`repo`] → [`deploy`] / [`image`] →
//! [`qemu`]; [`ignition`] builds and validates first-boot configs.

pub mod blockdev;
pub mod cleanup;
pub mod cli;
pub mod cmd;
pub mod compose;
pub mod deploy;
pub mod error;
pub mod fleetlock;
pub mod fstime;
pub mod ignition;
pub mod image;
pub mod install;
pub mod output;
pub mod progress;
pub mod publish;
pub mod qemu;
pub mod recipe;
pub mod remote;
pub mod repo;
pub mod reproducible;
pub mod updates;
pub mod validate;
