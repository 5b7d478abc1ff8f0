//! Compose: a recipe becomes a Debian root (mmdebstrap), converted to the OSTree layout and
//! committed with metadata.

//!
//! Stages, one module each: [`sources`] (host apt sources, mirror state), [`bootstrap`]
//! (mmdebstrap with cached .debs), [`overlay`], [`postprocess`] (units, scripts,
//! remove-files), [`initramfs`] (dracut), [`layout`] (OSTree conversion), [`inputhash`]
//! (no-change detection); [`pipeline`] runs them and commits; [`cli`] is `kiln compose`.

pub mod bootstrap;
pub mod chroot;
pub mod cli;
pub mod epoch;
pub mod initramfs;
pub mod inputhash;
pub mod layout;
pub mod overlay;
pub mod pipeline;
pub mod postprocess;
pub mod sources;

pub use pipeline::{compose, ComposeOptions, ComposeOutcome, MIRROR_STATE_KEY};

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Ref or commit.
    pub rev: String,
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Ref or commit.
    pub rev: String,
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_log(args: LogArgs) -> Result<()> {
    let repo = crate::repo::open(&args.repo)?;
    let commits = crate::repo::log(&repo, &args.rev, usize::MAX)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&commits).context("encoding JSON")?
        );
        return Ok(());
    }
    for c in commits {
        println!("commit {}", c.checksum);
        if let Some(v) = &c.version {
            println!("Version: {v}");
        }
        println!("Date:    {}", c.timestamp);
        if !c.subject.is_empty() {
            println!("\n    {}", c.subject);
        }
        println!();
    }
    Ok(())
}

pub fn cmd_show(args: ShowArgs) -> Result<()> {
    let repo = crate::repo::open(&args.repo)?;
    let c = crate::repo::read_commit(&repo, &args.rev)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&c).context("encoding JSON")?
        );
        return Ok(());
    }
    println!("commit {}", c.checksum);
    if let Some(p) = &c.parent {
        println!("parent {p}");
    }
    println!("timestamp {}", c.timestamp);
    for (k, v) in &c.metadata {
        if k == crate::repo::keys::PACKAGES || k == crate::repo::keys::RECIPE {
            continue;
        }
        println!("{k}: {v}");
    }
    let pkgs = c.meta_list(crate::repo::keys::PACKAGES);
    if !pkgs.is_empty() {
        println!("packages ({}):", pkgs.len());
        for p in pkgs {
            println!("  {p}");
        }
    }
    Ok(())
}
