//! `kiln compose`: a recipe file in, a commit (or "unchanged") out.

use super::{compose, ComposeOptions};
use anyhow::Result;
use std::path::PathBuf;

/// `--repo-mode`, checked by clap with the repo module's rule.
fn parse_repo_mode(s: &str) -> Result<ostree::RepoMode, String> {
    crate::repo::parse_mode(s).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct ComposeArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// OSTree repository to commit to (created when missing).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// Mode for a newly created repo: bare-user (fast, local) or archive (publishing).
    #[arg(long, default_value = "bare-user", value_parser = parse_repo_mode)]
    pub repo_mode: ostree::RepoMode,
    /// Where downloaded .debs, apt lists, logs and the temporary work dir live.
    #[arg(long, default_value = "build/cache")]
    pub cache_dir: PathBuf,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep a copy of the final tree at this path.
    #[arg(long, hide = true)]
    pub keep_tree: Option<PathBuf>,
}

/// `kiln compose`: exit 0 with a new commit, or with `skipped` when nothing changed.
pub fn cmd_compose(args: ComposeArgs) -> Result<()> {
    let recipe = crate::recipe::load(&args.recipe)?;
    let opts = ComposeOptions {
        repo: args.repo.clone(),
        repo_mode: args.repo_mode,
        cache_dir: args.cache_dir.clone(),
        kiln_binary: None,
        keep_tree: args.keep_tree.clone(),
        apt_root: PathBuf::from("/"),
        quiet: false,
    };
    let out = compose(&recipe, &opts)?;
    crate::output::emit(args.json, &out, |out| {
        if out.skipped {
            println!(
                "{}: unchanged, {} ({}) is current",
                out.ref_, out.commit, out.version
            );
        } else {
            println!("{}: {} ({})", out.ref_, out.commit, out.version);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        compose: ComposeArgs,
    }

    #[test]
    fn repo_mode_is_checked_at_the_door() {
        let t = T::try_parse_from(["t", "r.toml"]).unwrap();
        assert_eq!(t.compose.repo_mode, ostree::RepoMode::BareUser);
        let t = T::try_parse_from(["t", "r.toml", "--repo-mode", "archive"]).unwrap();
        assert_eq!(t.compose.repo_mode, ostree::RepoMode::Archive);
        let e = T::try_parse_from(["t", "r.toml", "--repo-mode", "zip"]).unwrap_err();
        assert!(e.to_string().contains("unknown repo mode"), "{e}");
    }
}
