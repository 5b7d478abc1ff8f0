//! Commit inspection: `kiln log`, `kiln show` and `kiln diff`.

use crate::deploy::cli::{parse_rev, short, ver};
use anyhow::Result;
use std::path::PathBuf;

/// `kiln log` and `kiln show`: one rev of a repo.
#[derive(Debug, clap::Args)]
pub struct RevArgs {
    /// Ref or commit.
    #[arg(value_parser = parse_rev)]
    pub rev: String,
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Ref or checksum of the older commit.
    #[arg(value_parser = parse_rev)]
    pub from: String,
    /// Ref or checksum of the newer commit.
    #[arg(value_parser = parse_rev)]
    pub to: String,
    /// The repo holding both commits.
    #[arg(long, default_value = "build/repo", conflicts_with = "sysroot")]
    pub repo: PathBuf,
    /// Look the commits up in this sysroot's repo instead.
    #[arg(long)]
    pub sysroot: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_log(args: RevArgs) -> Result<()> {
    let repo = super::open(&args.repo)?;
    let commits = super::log(&repo, &args.rev, usize::MAX)?;
    if args.json {
        return crate::output::json(&commits);
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

pub fn cmd_show(args: RevArgs) -> Result<()> {
    let repo = super::open(&args.repo)?;
    let c = super::read_commit(&repo, &args.rev)?;
    if args.json {
        return crate::output::json(&c);
    }
    println!("commit {}", c.checksum);
    if let Some(p) = &c.parent {
        println!("parent {p}");
    }
    println!("timestamp {}", c.timestamp);
    for (k, v) in &c.metadata {
        if k == super::keys::PACKAGES || k == super::keys::RECIPE {
            continue;
        }
        println!("{k}: {v}");
    }
    let pkgs = c.meta_list(super::keys::PACKAGES);
    if !pkgs.is_empty() {
        println!("packages ({}):", pkgs.len());
        for p in pkgs {
            println!("  {p}");
        }
    }
    Ok(())
}

pub fn cmd_diff(a: DiffArgs) -> Result<()> {
    let (repo, name) = match &a.sysroot {
        Some(s) => {
            crate::deploy::ensure_initialized(s)?;
            let p = s.join("ostree/repo");
            (
                super::open(&p)?,
                format!("the repo of sysroot {}", s.display()),
            )
        }
        None => (
            crate::deploy::open_source_repo(&a.repo)?,
            format!("the repo {}", a.repo.display()),
        ),
    };
    let d = super::diff::diff(&repo, &name, &a.from, &a.to)?;
    if a.json {
        return crate::output::json(&d);
    }
    println!(
        "Packages from {} (commit {}) to {} (commit {}):",
        ver(&d.from.version),
        short(&d.from.checksum),
        ver(&d.to.version),
        short(&d.to.checksum)
    );
    for p in &d.added {
        println!("  added:   {} {}", p.name, p.version);
    }
    for p in &d.removed {
        println!("  removed: {} {}", p.name, p.version);
    }
    for p in &d.changed {
        println!("  changed: {} {} -> {}", p.name, p.from, p.to);
    }
    println!(
        "{} added, {} removed, {} changed.",
        d.added.len(),
        d.removed.len(),
        d.changed.len()
    );
    Ok(())
}
