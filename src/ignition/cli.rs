//! `kiln ignition build|validate`.

use super::{check_output_file, validate_json, write_private_atomic};
use crate::error::InputError;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum IgnitionCommand {
    /// Transpile a TOML config (plus ordered fragments) to Ignition 3.3.0 JSON.
    Build(BuildArgs),
    /// Validate an Ignition 3.0–3.3 JSON config; exits 1 when it has errors.
    Validate(ValidateArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The TOML config.
    pub config: PathBuf,
    /// Directory that `local` references are relative to (default: the config's directory).
    #[arg(long)]
    pub files_dir: Option<PathBuf>,
    /// Directory of NN-*.toml fragments merged over the config in name order.
    #[arg(short = 'd', long = "fragments")]
    pub fragments: Option<PathBuf>,
    /// Where to write the JSON ("-" for stdout).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Check the config against the image of commit REPO:REF (a ref or checksum): files
    /// the image has written without `overwrite`, paths under /usr, unknown groups, units
    /// and ExecStart programs the image lacks. Refuses with the config's file:line.
    #[arg(long, value_name = "REPO:REF", value_parser = against_arg)]
    pub against: Option<(PathBuf, String)>,
    /// With --against: the platform the image is for (its disks' names are checked).
    #[arg(long, requires = "against", value_parser = ["qemu", "metal", "aws", "gcp", "azure", "vmware", "openstack"])]
    pub platform: Option<String>,
}

/// `REPO:REF`: a repository path and a ref or checksum (split at the last `:`).
pub fn against_arg(s: &str) -> Result<(PathBuf, String), String> {
    let (repo, rev) = s.rsplit_once(':').ok_or_else(|| {
        format!("{s:?}: expected REPO:REF, e.g. build/repo:kiln/bookworm/x86_64/base")
    })?;
    if repo.is_empty() {
        return Err(format!("{s:?}: the repository path is empty"));
    }
    crate::validate::rev(rev)?;
    Ok((PathBuf::from(repo), rev.to_string()))
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The Ignition JSON config ("-" for stdin).
    pub file: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The tree of `rev` in the repository at `repo`; a repository or rev that is not there
/// is bad input.
pub fn open_image(
    repo: &std::path::Path,
    rev: &str,
    key: &str,
) -> Result<crate::repo::tree::CommitTree> {
    let bad = |m: String| InputError::new("command line", m).key(key);
    if !repo.join("config").is_file() {
        return Err(bad(format!("{} is not an OSTree repository", repo.display())).into());
    }
    let r = crate::repo::open(repo)?;
    if crate::repo::resolve(&r, rev)?.is_none() {
        return Err(bad(format!("{rev} is not in {}", repo.display())).into());
    }
    crate::repo::tree::CommitTree::open(&r, rev)
}

pub fn cmd(c: IgnitionCommand) -> Result<()> {
    match c {
        IgnitionCommand::Build(a) => {
            if a.output.as_os_str() != "-" {
                check_output_file(&a.output, "--output")?;
            }
            let image = match &a.against {
                Some((repo, rev)) => Some(open_image(repo, rev, "--against")?),
                None => None,
            };
            let against = image.as_ref().map(|image| super::Against {
                image,
                platform: a.platform.as_deref(),
            });
            let b = super::build_against(
                &a.config,
                a.files_dir.as_deref(),
                a.fragments.as_deref(),
                against.as_ref(),
            )?;
            for w in &b.warnings {
                eprintln!("kiln: {w}");
            }
            if a.output.as_os_str() == "-" {
                print!("{}", b.json);
            } else {
                write_private_atomic(&a.output, b.json.as_bytes())?;
            }
            Ok(())
        }
        IgnitionCommand::Validate(a) => {
            let text = if a.file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the config from stdin")?;
                s
            } else {
                let bytes = std::fs::read(&a.file)
                    .with_context(|| format!("reading {}", a.file.display()))?;
                String::from_utf8(bytes).map_err(|_| {
                    InputError::new(a.file.display().to_string(), "not UTF-8 text, so not JSON")
                })?
            };
            let report = validate_json(&text);
            if a.json {
                crate::output::json(&serde_json::json!({
                    "file": a.file.display().to_string(),
                    "valid": !report.has_errors(),
                    "version": report.version,
                    "diagnostics": report.diagnostics,
                }))?;
            } else {
                eprint!("{report}");
            }
            if report.has_errors() {
                let n = report.errors().count();
                return Err(InputError::new(
                    a.file.display().to_string(),
                    format!("invalid Ignition config: {n} error(s)"),
                )
                .into());
            }
            Ok(())
        }
    }
}
