//! Compose: a recipe becomes a Debian root (mmdebstrap), converted to the OSTree layout and
//! committed with metadata.

//!
//! Stages, one module each: [`sources`] (host apt sources, mirror state), [`bootstrap`]
//! (mmdebstrap with cached .debs), [`overlay`], [`postprocess`] (units, scripts,
//! remove-files), [`initramfs`] (dracut), [`layout`] (OSTree conversion), [`inputhash`]
//! (no-change detection); [`pipeline`] runs them and commits.

pub mod bootstrap;
pub mod chroot;
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
pub struct ComposeArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// OSTree repository to commit to (created when missing).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// Mode for a newly created repo: bare-user (fast, local) or archive (publishing).
    #[arg(long, default_value = "bare-user")]
    pub repo_mode: String,
    /// Where downloaded .debs, apt lists, logs and the temporary work dir live.
    #[arg(long, default_value = "build/cache")]
    pub cache_dir: PathBuf,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the final tree at this path (same file system as the cache dir).
    #[arg(long, hide = true)]
    pub keep_tree: Option<PathBuf>,
}

/// `kiln compose`: exit 0 with a new commit, or with `skipped` when nothing changed.
pub fn cmd_compose(args: ComposeArgs) -> Result<()> {
    let recipe = crate::recipe::load(&args.recipe)?;
    let opts = ComposeOptions {
        repo: args.repo.clone(),
        repo_mode: crate::repo::parse_mode(&args.repo_mode)?,
        cache_dir: args.cache_dir.clone(),
        kiln_binary: None,
        keep_tree: args.keep_tree.clone(),
        apt_root: PathBuf::from("/"),
        quiet: false,
    };
    let out = compose(&recipe, &opts)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encoding JSON")?
        );
    } else if out.skipped {
        println!(
            "{}: unchanged, {} ({}) is current",
            out.ref_, out.commit, out.version
        );
    } else {
        println!("{}: {} ({})", out.ref_, out.commit, out.version);
    }
    Ok(())
}
