//! `kiln verify-reproducible`: arguments, handler and the report for people.

use super::{verify, Verdict as Comparison, VerifyOptions};
use crate::error::{InputError, Verdict};
use crate::image::disk::Size;
use crate::image::Format;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Image formats to build from each commit and compare (comma-separated; `none` for
    /// commits only).
    #[arg(long, default_value = "raw,qcow2", value_delimiter = ',')]
    pub format: Vec<CompareFormat>,
    /// Disk size of the images.
    #[arg(long, default_value = "4G")]
    pub size: Size,
    /// Where both builds happen (`a/` and `b/`, each with its own cache dir and repo).
    /// Default: a new directory under /var/tmp, removed at the end unless --keep. A given
    /// directory is kept, and cache dirs already in it are used as they are.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (repos, images, diffoscope reports).
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object with the result on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One value of `--format`: an image format the two builds are compared by, or `none`
/// (commits only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareFormat(pub Option<Format>);

impl std::str::FromStr for CompareFormat {
    type Err = InputError;

    fn from_str(s: &str) -> Result<CompareFormat, InputError> {
        match s.trim() {
            "raw" => Ok(CompareFormat(Some(Format::Raw))),
            "qcow2" => Ok(CompareFormat(Some(Format::Qcow2))),
            "none" | "" => Ok(CompareFormat(None)),
            other => Err(InputError::new(
                "command line",
                format!("unknown image format {other:?} (raw, qcow2 or none)"),
            )
            .key("--format")),
        }
    }
}

/// The formats to build, in order, without `none` and repeats in a row.
fn formats(v: &[CompareFormat]) -> Vec<Format> {
    let mut out: Vec<Format> = v.iter().filter_map(|f| f.0).collect();
    out.dedup();
    out
}

/// `kiln verify-reproducible`: Ok when both builds are identical, else
/// [`Verdict::NotReproducible`] (exit 1).
pub fn cmd_verify(a: VerifyArgs) -> Result<()> {
    // Fail on a bad recipe before any work.
    crate::recipe::load(&a.recipe)?;
    let (work_dir, temp) = match &a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = crate::cleanup::TempDir::new_in(Path::new("/var/tmp"), "kiln-verify-")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let v = verify(&VerifyOptions {
        recipe: a.recipe.clone(),
        formats: formats(&a.format),
        size: a.size.bytes(),
        work_dir: work_dir.clone(),
        quiet: a.json,
    });
    let keep = a.keep || a.work_dir.is_some();
    if let Some(t) = temp {
        if keep {
            let _ = t.keep();
        } else {
            drop(t);
        }
    }
    let v = v?;
    crate::output::emit(a.json, &v, |v| print_verdict(v, keep))?;
    if !v.reproducible {
        return Err(Verdict::NotReproducible.into());
    }
    Ok(())
}

fn print_verdict(v: &Comparison, kept: bool) {
    println!("commit   a {}  b {}", v.a.commit, v.b.commit);
    println!(
        "content  a {}  b {}",
        v.a.content_checksum, v.b.content_checksum
    );
    for (f, sa) in &v.a.images {
        let sb = v.b.images.get(f).map(String::as_str).unwrap_or("-");
        println!("{f:<8} a {sa}  b {sb}");
    }
    if v.reproducible {
        println!("reproducible: both builds are bit-identical");
    } else {
        println!("NOT reproducible:");
        for d in &v.differences {
            println!("  {d}");
        }
        if let Some(r) = &v.report {
            println!("diffoscope report: {}", r.display());
        }
    }
    if kept {
        println!("work dir kept: {}", v.work_dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        let p = |s: &str| s.parse::<CompareFormat>();
        let f = formats(&[p("raw").unwrap(), p("qcow2").unwrap()]);
        assert_eq!(f, vec![Format::Raw, Format::Qcow2]);
        assert!(formats(&[p("none").unwrap()]).is_empty());
        assert!(p("iso").is_err());
    }
}
