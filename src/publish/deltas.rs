//! Static deltas: where they live in a repo, their names, and generating them in parallel.

use super::DeltaReport;
use anyhow::{Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// libostree's "modified base64" of a checksum, as used in delta paths: standard base64
/// without padding, `/` replaced by `_`.
fn mbase64(checksum: &str) -> Result<String> {
    let bytes = hex::decode(checksum).with_context(|| format!("bad checksum {checksum:?}"))?;
    let v = glib::base64_encode(&bytes).to_string();
    Ok(v.trim_end_matches('=').replace('/', "_"))
}

/// The directory of a static delta inside a repo (`deltas/AB/CDE...-XYZ...`).
pub fn delta_dir(repo: &Path, from: Option<&str>, to: &str) -> Result<PathBuf> {
    let to64 = mbase64(to)?;
    let rel = match from {
        Some(f) => {
            let f64_ = mbase64(f)?;
            format!("{}/{}-{}", &f64_[..2], &f64_[2..], to64)
        }
        None => format!("{}/{}", &to64[..2], &to64[2..]),
    };
    Ok(repo.join("deltas").join(rel))
}

/// Splits a delta name as libostree lists it (`FROM-TO` or `TO`).
pub fn parse_delta_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once('-') {
        Some((f, t)) => (Some(f), t),
        None => (None, name),
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Ok(md) = e.metadata() {
                n += if md.is_dir() {
                    dir_size(&e.path())
                } else {
                    md.len()
                };
            }
        }
    }
    n
}

/// Generates static deltas `(from, to)` in `repo`, up to `jobs` at once (default: one per
/// CPU), each thread with its own libostree repo object.
pub(crate) fn generate_deltas(
    repo: &Path,
    work: VecDeque<(Option<String>, String)>,
    jobs: Option<usize>,
) -> Result<Vec<DeltaReport>> {
    let n = jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, work.len().max(1));
    let queue = Mutex::new(work);
    let results: Mutex<Vec<Result<DeltaReport>>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| {
                let r = match crate::repo::open(repo) {
                    Ok(r) => r,
                    Err(e) => {
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Err(e));
                        return;
                    }
                };
                loop {
                    let job = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some((from, to)) = job else { break };
                    let res = generate_one(&r, repo, from.as_deref(), &to);
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(res);
                }
            });
        }
    });
    let mut out = Vec::new();
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        out.push(r?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn generate_one(
    r: &ostree::Repo,
    path: &Path,
    from: Option<&str>,
    to: &str,
) -> Result<DeltaReport> {
    let start = Instant::now();
    // An explicit a{sv}: libostree 2022.7 crashes when params is NULL.
    let params = glib::VariantDict::new(None);
    params.insert_value("verbose", &false.to_variant());
    params.insert_value("bsdiff-enabled", &true.to_variant());
    r.static_delta_generate(
        ostree::StaticDeltaGenerateOpt::Major,
        from,
        to,
        None,
        Some(&params.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| match from {
        Some(f) => format!("generating the static delta {f} -> {to}"),
        None => format!("generating the static delta from empty to {to}"),
    })?;
    let dir = delta_dir(path, from, to)?;
    Ok(DeltaReport {
        name: match from {
            Some(f) => format!("{f}-{to}"),
            None => to.to_string(),
        },
        from: from.map(String::from),
        to: to.to_string(),
        bytes: dir_size(&dir),
        seconds: (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbase64_matches_libostree_delta_names() {
        let c = "a".repeat(64);
        let b = mbase64(&c).unwrap();
        assert_eq!(b.len(), 43);
        assert!(!b.contains('/') && !b.contains('='));
    }
}
