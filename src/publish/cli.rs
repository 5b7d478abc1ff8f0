//! `kiln publish`: arguments, and the report printed for people or as JSON.

use super::{publish, PublishOptions, PublishReport};
use anyhow::Result;
use std::path::PathBuf;

fn parse_ref(s: &str) -> Result<String, String> {
    crate::validate::ostree_ref(s).map(|()| s.to_string())
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The build repo holding the commits (any mode).
    #[arg(long, default_value = "build/repo")]
    pub repo: PathBuf,
    /// The published repo (mode archive; created when missing).
    #[arg(long, required_unless_present = "oci", conflicts_with = "oci")]
    pub to: Option<PathBuf>,
    /// Publish one commit (--ref, or the repo's only ref) as an ostree-container image to
    /// a registry (`HOST/REPO:TAG`, `docker://…`), an OCI layout (`oci:DIR:TAG`) or an
    /// archive (`oci-archive:FILE:TAG`); --gpg-sign (simple signing) or --sigstore-key signs.
    #[arg(long, value_parser = parse_oci_dest)]
    pub oci: Option<super::oci::Dest>,
    /// Layers of an --oci image at most.
    #[arg(long, default_value_t = super::oci::MAX_LAYERS, requires = "oci")]
    pub max_layers: usize,
    /// --oci: the registry credentials (containers-auth.json; default: skopeo's).
    #[arg(long, requires = "oci")]
    pub authfile: Option<PathBuf>,
    /// --oci: a directory of CA certificates (*.crt) for the registry's TLS.
    #[arg(long, requires = "oci")]
    pub cert_dir: Option<PathBuf>,
    /// --oci: sign with this sigstore private key.
    #[arg(long, requires = "oci")]
    pub sigstore_key: Option<PathBuf>,
    /// --oci: the passphrase of the signing key, in a file.
    #[arg(long, requires = "oci")]
    pub sign_passphrase_file: Option<PathBuf>,
    /// --oci: containers registries.d directory (where simple signatures are staged).
    #[arg(long, requires = "oci")]
    pub registries_d: Option<PathBuf>,
    /// Refs to publish, repeatable; default: every ref of the build repo.
    #[arg(long = "ref", value_parser = parse_ref)]
    pub refs: Vec<String>,
    /// GPG key to sign new commits and the summary with, repeatable (key id or fingerprint).
    #[arg(long = "gpg-sign")]
    pub gpg_sign: Vec<String>,
    /// GnuPG home holding the secret key (default: gpg's own, ~/.gnupg).
    #[arg(long)]
    pub gpg_homedir: Option<PathBuf>,
    /// Generate static deltas to each new commit from this many previous commits of its ref.
    #[arg(long, default_value_t = 1)]
    pub deltas_from_previous: usize,
    /// Also generate a delta from nothing (one-file download for fresh installs).
    #[arg(long)]
    pub delta_from_empty: bool,
    /// Keep only the newest K commits of each ref; older commits, their objects and their
    /// deltas are removed.
    #[arg(long)]
    pub keep: Option<usize>,
    /// Parallel delta generators (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// One JSON object on stdout describing what was added and pruned.
    #[arg(long)]
    pub json: bool,
}

fn parse_oci_dest(s: &str) -> Result<super::oci::Dest, String> {
    super::oci::Dest::parse(s)
}

pub fn cmd_publish(a: PublishArgs) -> Result<()> {
    if let Some(dest) = &a.oci {
        if a.refs.len() > 1 {
            return Err(crate::error::InputError::new(
                "command line",
                "--oci publishes one commit: give one --ref",
            )
            .key("--ref")
            .into());
        }
        if a.gpg_sign.len() > 1 {
            return Err(crate::error::InputError::new(
                "command line",
                "--oci signs with one key: give one --gpg-sign",
            )
            .key("--gpg-sign")
            .into());
        }
        let report = super::oci::publish_oci(
            dest,
            &super::oci::OciOptions {
                repo: a.repo,
                rev: a.refs.first().cloned(),
                max_layers: a.max_layers,
                push: crate::repo::oci::transport::PushOptions {
                    authfile: a.authfile,
                    cert_dir: a.cert_dir,
                    sign_by: a.gpg_sign.first().cloned(),
                    gpg_homedir: a.gpg_homedir,
                    sigstore_key: a.sigstore_key,
                    passphrase_file: a.sign_passphrase_file,
                    registries_d: a.registries_d,
                },
                quiet: a.json,
            },
        )?;
        return crate::output::emit(a.json, &report, print_oci_report);
    }
    let report = publish(&PublishOptions {
        repo: a.repo,
        to: a.to.unwrap_or_default(),
        refs: a.refs,
        gpg_sign: a.gpg_sign,
        gpg_homedir: a.gpg_homedir,
        deltas_from_previous: a.deltas_from_previous,
        delta_from_empty: a.delta_from_empty,
        keep: a.keep,
        jobs: a.jobs,
        quiet: false,
    })?;
    crate::output::emit(a.json, &report, print_report)
}

fn print_report(report: &PublishReport) {
    for r in &report.refs {
        match &r.from {
            Some(f) if f == &r.to => println!("{}: unchanged at {}", r.ref_, short(&r.to)),
            Some(f) => println!(
                "{}: {} -> {} ({}, {} new commit(s))",
                r.ref_,
                short(f),
                short(&r.to),
                r.version.as_deref().unwrap_or("no version"),
                r.commits_added.len()
            ),
            None => println!(
                "{}: new at {} ({})",
                r.ref_,
                short(&r.to),
                r.version.as_deref().unwrap_or("no version")
            ),
        }
    }
    for d in &report.deltas_added {
        println!("delta {}: {} bytes in {:.2}s", d.name, d.bytes, d.seconds);
    }
    println!(
        "{} objects added; {} commit(s), {} delta(s), {} objects ({} bytes) pruned; summary {}.",
        report.objects_added,
        report.commits_pruned.len(),
        report.deltas_pruned.len(),
        report.objects_pruned,
        report.bytes_pruned,
        if report.summary_signed {
            "signed"
        } else {
            "unsigned"
        }
    );
}

fn print_oci_report(r: &super::oci::OciReport) {
    println!(
        "{}: commit {} ({}) as {} in {} layers, {} compressed{}",
        r.destination,
        short(&r.commit),
        r.version.as_deref().unwrap_or("no version"),
        r.manifest_digest,
        r.layers.len(),
        crate::progress::human_bytes(r.image_bytes),
        if r.signed { ", signed" } else { "" }
    );
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        publish: PublishArgs,
    }

    #[test]
    fn refs_are_checked_at_the_door() {
        let t = T::try_parse_from(["t", "--to", "p", "--ref", "kiln/stable/x86_64/base"]);
        assert_eq!(t.unwrap().publish.refs, ["kiln/stable/x86_64/base"]);
        let e = T::try_parse_from(["t", "--to", "p", "--ref", "../x"]).unwrap_err();
        assert!(e.to_string().contains("invalid ref"), "{e}");
    }
}
