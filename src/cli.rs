//! The command line. Each subcommand's arguments live with the module that implements it;
//! this file only assembles them.

use clap::{Parser, Subcommand};

/// kiln builds minimal, immutable, OSTree-based Debian container-host systems:
/// compose a recipe into a commit, deploy it, turn it into bootable images, provision
/// them with Ignition and boot them in QEMU.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an OSTree commit from a recipe.
    Compose(crate::compose::cli::ComposeArgs),
    /// Recipes: show the resolved recipe (includes and fragments merged).
    #[command(subcommand)]
    Recipe(crate::recipe::cli::RecipeCommand),
    /// Show the commit history of a ref.
    Log(crate::repo::cli::RevArgs),
    /// Show one commit's metadata and package list.
    Show(crate::repo::cli::RevArgs),
    /// Deploy a commit to a sysroot and make it the next boot.
    Deploy(crate::deploy::cli::DeployArgs),
    /// Deploy another ref or a container image, keeping /etc and kernel arguments.
    Rebase(crate::deploy::cli::DeployArgs),
    /// Show the deployments of a sysroot.
    Status(crate::deploy::cli::StatusArgs),
    /// Pull the newest commit of the booted ref and deploy it.
    Upgrade(crate::deploy::cli::UpgradeArgs),
    /// Make the rollback deployment the next boot.
    Rollback(crate::deploy::cli::SysrootArgs),
    /// Keep a deployment through cleanups and upgrades.
    Pin(crate::deploy::cli::PinArgs),
    /// Let a pinned deployment go again.
    Unpin(crate::deploy::cli::PinArgs),
    /// Remove old unpinned deployments and prune unreachable objects.
    Cleanup(crate::deploy::cli::CleanupArgs),
    /// Change kernel arguments (new deployment, or in place).
    Kargs(crate::deploy::cli::KargsArgs),
    /// Boot health: judge this boot, mark it good by hand, forget a rejected commit.
    #[command(subcommand)]
    Health(crate::deploy::cli::HealthCommand),
    /// Packages added, removed and changed between two commits.
    Diff(crate::repo::cli::DiffArgs),
    /// Publish commits to an archive repo for HTTP clients (deltas, signatures, retention).
    Publish(crate::publish::cli::PublishArgs),
    /// Update servers of a sysroot: add, list, delete.
    #[command(subcommand)]
    Remote(crate::remote::cli::RemoteCommand),
    /// Build a bootable disk image from a commit.
    Image(crate::image::cli::ImageArgs),
    /// Live ISOs: embed an Ignition config, change kernel arguments, in place.
    #[command(subcommand)]
    Iso(crate::image::cli::IsoCommand),
    /// Install a disk image (file, URL or commit) on a disk, with an Ignition config.
    Install(crate::install::cli::InstallArgs),
    /// Boot an image in QEMU; this terminal is its serial console (Ctrl-a x quits,
    /// Ctrl-a c toggles QEMU's monitor); `--ssh` forwards a port for ssh.
    Run(crate::qemu::cli::RunArgs),
    /// Build a recipe twice from scratch and check commits and images are bit-identical.
    VerifyReproducible(crate::reproducible::cli::VerifyArgs),
    /// Ignition configs: build from TOML, validate JSON.
    #[command(subcommand)]
    Ignition(crate::ignition::cli::IgnitionCommand),
    /// Coordinated reboots (FleetLock on etcd): serve, status, release, steady-state.
    #[command(subcommand)]
    Fleetlock(crate::fleetlock::cli::FleetlockCommand),
    /// Finalize a staged deployment at shutdown (run by ostree-finalize-staged.service).
    #[command(hide = true)]
    FinalizeStaged,
    /// Write a boot version's GRUB menu from its BLS entries (libostree's grub2 config
    /// generator; libostree runs `kiln -o PATH`, which `main` turns into this command).
    #[command(hide = true)]
    Grub2Generate(crate::deploy::cli::Grub2GenerateArgs),
}
