//! `kiln remote add/list/delete`: the command-line front end of [`super`].

use super::{add, delete, list, RemoteInfo};
use crate::deploy::cli::parse_remote;
use anyhow::Result;
use std::path::PathBuf;

/// A remote URL as `kiln remote add` takes it (the one URL rule, http(s) or file).
fn parse_remote_url(s: &str) -> Result<String, String> {
    crate::validate::url(s, crate::validate::Schemes::HttpOrFile)
        .map(|()| s.to_string())
        .map_err(|m| format!("remote URL: {m}"))
}

#[derive(Debug, clap::Subcommand)]
pub enum RemoteCommand {
    /// Add a remote (an update server) to the sysroot's repo.
    Add(RemoteAddArgs),
    /// List the sysroot's remotes.
    List(RemoteListArgs),
    /// Remove a remote and its trusted keys.
    Delete(RemoteDeleteArgs),
}

#[derive(Debug, clap::Args)]
pub struct RemoteAddArgs {
    /// Remote name (what origins refer to as NAME:REF).
    #[arg(value_parser = parse_remote)]
    pub name: String,
    /// Base URL of the published repo (http://, https:// or file://).
    #[arg(value_parser = parse_remote_url)]
    pub url: String,
    /// Trust the GPG public keys in this file (armored or binary) for this remote;
    /// repeatable (key rotation: import the new key next to the old one).
    #[arg(long = "gpg-import", conflicts_with = "no_gpg_verify")]
    pub gpg_import: Vec<PathBuf>,
    /// Do not verify signatures (only for trusted networks and tests).
    #[arg(long)]
    pub no_gpg_verify: bool,
    /// The sysroot whose repo gets the remote (initialized when needed).
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
    /// Stateroot to create when the sysroot is new.
    #[arg(long = "os", default_value = "kiln")]
    pub os: String,
    /// Replace a remote of the same name.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoteListArgs {
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoteDeleteArgs {
    #[arg(value_parser = parse_remote)]
    pub name: String,
    #[arg(long, default_value = "/")]
    pub sysroot: PathBuf,
}

pub fn cmd(c: RemoteCommand) -> Result<()> {
    match c {
        RemoteCommand::Add(a) => {
            let n = add(
                &a.sysroot,
                &a.os,
                &a.name,
                &a.url,
                &a.gpg_import,
                !a.no_gpg_verify,
                a.force,
            )?;
            if a.no_gpg_verify {
                println!(
                    "Added remote {} ({}) WITHOUT signature verification.",
                    a.name, a.url
                );
            } else if n > 0 {
                println!(
                    "Added remote {} ({}); {n} GPG key(s) trusted for it; commits and the \
                     summary must be signed.",
                    a.name, a.url
                );
            } else {
                println!(
                    "Added remote {} ({}); signatures are verified against the keys in \
                     /usr/share/ostree/trusted.gpg.d and /etc/ostree/remotes.d.",
                    a.name, a.url
                );
            }
            Ok(())
        }
        RemoteCommand::List(a) => {
            let l = list(&a.sysroot)?;
            crate::output::emit(a.json, &l, |l| print_list(l))
        }
        RemoteCommand::Delete(a) => {
            delete(&a.sysroot, &a.name)?;
            println!("Deleted remote {}.", a.name);
            Ok(())
        }
    }
}

fn print_list(l: &[RemoteInfo]) {
    if l.is_empty() {
        println!("No remotes.");
    } else {
        for r in l {
            println!(
                "{}\t{}\t{}",
                r.name,
                r.url,
                if r.gpg_verify {
                    if r.has_keys {
                        "gpg-verify (keys imported)"
                    } else {
                        "gpg-verify"
                    }
                } else {
                    "no-gpg-verify"
                }
            );
        }
    }
}
