//! Writing paths and values into QEMU option strings (and migration URIs).

use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// A value for a QEMU option string (`-drive`, `-chardev`, `-netdev`, `-device`,
/// `-fw_cfg`, ...): QEMU splits those at every `,`, and reads `,,` as one literal comma.
/// Every path or user value put into an option string goes through here, so a comma in
/// it can neither break the option nor add one (`a,snapshot=off`).
pub fn opt_value(v: &str) -> String {
    v.replace(',', ",,")
}

/// A path for a QEMU option string: absolute (a relative `nbd:x` or `json:{…}` would be
/// read as a protocol prefix by `-drive file=`), UTF-8 (QEMU's option strings are text;
/// a lossy conversion would name another file), and escaped with [`opt_value`].
pub fn opt_path(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))?;
    let s = abs
        .to_str()
        .ok_or_else(|| anyhow!("{}: QEMU needs paths that are valid UTF-8", abs.display()))?;
    Ok(opt_value(s))
}

/// `-incoming` for a saved state file. QEMU 7.2 has no `file:` transport; `exec:` runs its
/// argument through `/bin/sh`, so the path is single-quoted and may not hold a quote.
pub fn incoming_uri(state: &Path) -> Result<String> {
    Ok(format!("exec:cat {}", shell_path(state)?))
}

/// A path for a `/bin/sh` command line in a QEMU migration URI: absolute, UTF-8, quoted.
pub(crate) fn shell_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains('\'') || !p.is_absolute() {
        anyhow::bail!("a VM state file must be an absolute path without quotes: {s}");
    }
    Ok(format!("'{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_cannot_name_a_protocol() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            opt_path(Path::new("json:{a,b}")).unwrap(),
            format!("{}/json:{{a,,b}}", cwd.display())
        );
        assert_eq!(opt_value("a,,b"), "a,,,,b");
    }

    #[test]
    fn state_paths_are_quoted_for_the_shell() {
        assert_eq!(
            incoming_uri(Path::new("/tmp/a b/$x;state")).unwrap(),
            "exec:cat '/tmp/a b/$x;state'"
        );
        assert!(incoming_uri(Path::new("/tmp/it's")).is_err());
        assert!(incoming_uri(Path::new("relative/state")).is_err());
    }
}
