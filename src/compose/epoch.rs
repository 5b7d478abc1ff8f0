//! The build epoch (`SOURCE_DATE_EPOCH`) of a compose, and the rule that picks it:
//!
//! 1. `SOURCE_DATE_EPOCH` from the environment;
//! 2. else the recipe's `source-date-epoch`;
//! 3. else the newest changelog date among the installed packages (the first entry's
//!    trailer line of each `usr/share/doc/*/changelog.Debian.gz` or `changelog.gz`). That
//!    date is only known once the packages are installed, so compose bootstraps once to
//!    learn it and again with it; the date is remembered in the cache dir per bootstrap
//!    key, so the next compose of the same package set and mirror state goes straight to
//!    the second step.
//!
//! Every time kiln writes follows the epoch: the commit timestamp, `{date}` in the version,
//! mmdebstrap, dracut and postprocess scripts (`SOURCE_DATE_EPOCH`), and the image's
//! filesystems.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

/// Where the epoch came from (recorded as `kiln.source-date-epoch-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochSource {
    Environment,
    Recipe,
    Changelog,
}

impl EpochSource {
    pub fn name(self) -> &'static str {
        match self {
            EpochSource::Environment => "environment",
            EpochSource::Recipe => "recipe",
            EpochSource::Changelog => "changelog",
        }
    }
}

/// The newest changelog date (seconds since the epoch, UTC) of the packages in `tree`,
/// `None` when no changelog has a date kiln can read.
pub fn newest_changelog(tree: &Path) -> Result<Option<u64>> {
    let doc = tree.join("usr/share/doc");
    let rd = match std::fs::read_dir(&doc) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", doc.display())),
    };
    let mut newest: Option<u64> = None;
    for e in rd.flatten() {
        for name in ["changelog.Debian.gz", "changelog.gz"] {
            let f = e.path().join(name);
            // Symlinked doc dirs point at another package's changelog: counted there.
            if !f.is_file() || e.path().is_symlink() {
                continue;
            }
            if let Some(t) = first_entry_date(&f)? {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
            break;
        }
    }
    Ok(newest)
}

/// The date of a gzipped Debian changelog's first entry.
fn first_entry_date(f: &Path) -> Result<Option<u64>> {
    let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
    // The first entry is near the top: 64 KiB of text is plenty.
    let mut text = Vec::new();
    let _ = flate2::read::GzDecoder::new(file)
        .take(64 * 1024)
        .read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(" -- ") {
            // ` -- Name <email>  Thu, 01 Jan 2024 00:00:00 +0000`
            let date = rest.rsplit_once(">  ").map(|(_, d)| d).unwrap_or(rest);
            return Ok(parse_rfc2822(date.trim()));
        }
    }
    Ok(None)
}

/// Parses `[Day, ]DD Mon YYYY HH:MM:SS +ZZZZ` (RFC 2822, as `dpkg-parsechangelog` writes
/// it) into seconds since the epoch.
pub fn parse_rfc2822(s: &str) -> Option<u64> {
    let s = s.split_once(", ").map(|(_, r)| r).unwrap_or(s);
    let mut it = s.split_whitespace();
    let day: i64 = it.next()?.parse().ok()?;
    let mon = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next().unwrap_or("0").parse().ok()?;
    let tz = it.next().unwrap_or("+0000");
    let (sign, digits) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => (1, tz),
    };
    if digits.len() != 4 {
        return None;
    }
    let off =
        sign * (digits[..2].parse::<i64>().ok()? * 3600 + digits[2..].parse::<i64>().ok()? * 60);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let t = days_from_civil(year, mon, day) * 86400 + h * 3600 + m * 60 + sec - off;
    u64::try_from(t).ok()
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-07T17:45:01.5Z`, as OCI
/// image configs write `created`); fractions are dropped, offsets applied.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (clock, off) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (c, z) = time.split_at(i);
        let (h, m) = z[1..].split_once(':')?;
        let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
        (c, if z.starts_with('-') { -secs } else { secs })
    };
    let mut hms = clock.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next()?.split('.').next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    u64::try_from(days_from_civil(y, mo, day) * 86400 + h * 3600 + m * 60 + sec - off).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// File in the cache dir remembering the changelog epoch of an unpinned bootstrap key.
pub fn remembered_path(cache_dir: &Path, unpinned_key: &str) -> std::path::PathBuf {
    cache_dir
        .join("bootstrap")
        .join(format!(".epoch-{unpinned_key}"))
}

/// The remembered changelog epoch for `unpinned_key`, if any.
pub fn remembered(cache_dir: &Path, unpinned_key: &str) -> Option<u64> {
    std::fs::read_to_string(remembered_path(cache_dir, unpinned_key))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Remembers the changelog epoch for `unpinned_key` (temp file, then rename).
pub fn remember(cache_dir: &Path, unpinned_key: &str, epoch: u64) -> Result<()> {
    let p = remembered_path(cache_dir, unpinned_key);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, format!("{epoch}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_rfc3339("2023-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn rfc2822_dates() {
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_rfc2822("Tue, 14 Nov 2023 22:13:20 +0000"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc2822("Wed, 15 Nov 2023 00:13:20 +0200"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc2822("Tue, 14 Nov 2023 17:13:20 -0500"),
            Some(1_700_000_000)
        );
        assert_eq!(
            parse_rfc2822("29 Feb 2024 12:00:00 +0000"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_rfc2822("garbage"), None);
        assert_eq!(parse_rfc2822("Tue, 14 Foo 2023 22:13:20 +0000"), None);
    }

    fn changelog(dir: &Path, pkg: &str, date: &str) {
        let d = dir.join("usr/share/doc").join(pkg);
        std::fs::create_dir_all(&d).unwrap();
        let f = std::fs::File::create(d.join("changelog.Debian.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        write!(
            gz,
            "{pkg} (1.0-2) unstable; urgency=medium\n\n  * New.\n\n -- A B <a@b.org>  {date}\n\n\
             {pkg} (1.0-1) unstable; urgency=medium\n\n  * Old.\n\n -- A B <a@b.org>  \
             Mon, 01 Jan 2035 00:00:00 +0000\n"
        )
        .unwrap();
        gz.finish().unwrap();
    }

    #[test]
    fn newest_first_entry_wins() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(newest_changelog(t.path()).unwrap(), None);
        changelog(t.path(), "a", "Tue, 14 Nov 2023 22:13:20 +0000");
        changelog(t.path(), "b", "Thu, 01 Jan 1970 00:00:10 +0000");
        // Only each file's first entry counts (the 2035 entry is older history).
        assert_eq!(newest_changelog(t.path()).unwrap(), Some(1_700_000_000));
        std::os::unix::fs::symlink("a", t.path().join("usr/share/doc/c")).unwrap();
        assert_eq!(newest_changelog(t.path()).unwrap(), Some(1_700_000_000));
    }

    #[test]
    fn remembered_round_trip() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(remembered(t.path(), "k"), None);
        remember(t.path(), "k", 42).unwrap();
        assert_eq!(remembered(t.path(), "k"), Some(42));
    }
}
