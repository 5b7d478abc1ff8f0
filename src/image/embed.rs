//! The Ignition config an image carries: read and checked the way `kiln ignition
//! validate` checks it, then written private (0600) where the first-boot glue reads it
//! (`ignition/config.ign` on the boot partition; docs/firstboot.md).

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes the Ignition config as `ignition/config.ign` (0600) on the boot partition (the
/// first-boot stamp is written for every image).
pub(super) fn embed_ignition(src: &Path, bootdir: &Path) -> Result<()> {
    let text = read_ignition_config(src)?;
    write_ignition_config(&text, bootdir)?;
    Ok(())
}

/// The largest Ignition config file kiln embeds.
pub const MAX_IGNITION_CONFIG: u64 = 64 * 1024 * 1024;

/// Reads an Ignition config file and refuses one Ignition would reject
/// ([`check_ignition_config`]). Returns the text.
pub fn read_ignition_config(src: &Path) -> Result<String> {
    if !src.is_file() {
        return Err(crate::error::InputError::new(
            src.display().to_string(),
            "Ignition config not found",
        )
        .into());
    }
    // A FIFO or device named here is refused, never blocked on.
    let bytes = crate::validate::read_regular_file(src, MAX_IGNITION_CONFIG)
        .map_err(|m| crate::error::InputError::new(src.display().to_string(), m))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        crate::error::InputError::new(src.display().to_string(), "not UTF-8 text, so not JSON")
    })?;
    check_ignition_config(&text, &src.display().to_string())?;
    Ok(text)
}

/// Checks an Ignition config the way `kiln ignition validate` does: a config Ignition would
/// reject at first boot is refused now, not discovered on a machine's console. `source`
/// names the config in the [`crate::error::InputError`] (a file name or URL).
pub fn check_ignition_config(text: &str, source: &str) -> Result<()> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return Err(
            crate::error::InputError::new(source, format!("not JSON: {e}"))
                .at(e.line(), e.column())
                .into(),
        );
    }
    let report = crate::ignition::validate_json(text);
    if let Some(d) = report.errors().next() {
        let more = report.errors().count() - 1;
        let extra = if more > 0 {
            format!(" (and {more} more error(s); see `kiln ignition validate`)")
        } else {
            String::new()
        };
        return Err(crate::error::InputError::new(
            source,
            format!("{}: {}{extra}", d.path, d.message),
        )
        .at(d.line, d.col)
        .into());
    }
    Ok(())
}

/// Where the first-boot glue reads the Ignition config, relative to the boot partition
/// (coreos-installer's contract; docs/firstboot.md).
pub const IGNITION_CONFIG: &str = "ignition/config.ign";

/// Writes an (already checked) Ignition config as [`IGNITION_CONFIG`] on a boot
/// partition's directory: directory 0700, file 0600, written to a temp name and renamed
/// into place. Returns the file's path.
pub fn write_ignition_config(text: &str, bootdir: &Path) -> Result<PathBuf> {
    let dir = bootdir.join("ignition");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let dst = bootdir.join(IGNITION_CONFIG);
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.ign.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    // The umask may have narrowed the mode at creation, never widened it; set it exactly.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", tmp.path().display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    // map_err: the temp file inside a PersistError is deleted here, not kept alive.
    tmp.persist(&dst)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", dst.display()))?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignition_is_embedded_private() {
        let td = tempfile::tempdir().unwrap();
        let cfg = td.path().join("c.ign");
        std::fs::write(&cfg, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
        let boot = td.path().join("boot");
        std::fs::create_dir(&boot).unwrap();
        embed_ignition(&cfg, &boot).unwrap();
        let dst = boot.join("ignition/config.ign");
        assert_eq!(
            std::fs::read_to_string(&dst).unwrap(),
            r#"{"ignition":{"version":"3.3.0"}}"#
        );
        let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::write(&cfg, "{not json").unwrap();
        let err = embed_ignition(&cfg, &boot).unwrap_err();
        assert!(
            err.downcast_ref::<crate::error::InputError>().is_some(),
            "{err:#}"
        );

        std::fs::write(
            &cfg,
            r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"rel"}]}}"#,
        )
        .unwrap();
        let err = embed_ignition(&cfg, &boot).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("$.storage.files.0.path"), "{msg}");
    }
}
