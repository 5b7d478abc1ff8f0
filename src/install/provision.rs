//! Step 4 of an install from a prebuilt image: the written disk's root and boot
//! partitions mounted through loop devices, then the platform and kernel arguments
//! ([`kargs_edit`]), the Ignition config and the first-boot stamp applied.

use crate::blockdev::{partitions, LoopDev, Mount};
use crate::image::{self, firstboot, Platform};
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// The kernel-argument edit for an install: `ignition.platform.id` set to `platform`, then
/// `extra` appended (arguments already present are not repeated).
pub fn kargs_edit(
    current: &[String],
    platform: Platform,
    extra: &[String],
) -> crate::deploy::ops::KargsEdit {
    let mut edit = crate::deploy::ops::KargsEdit::default();
    let want = format!("ignition.platform.id={}", platform.id());
    let ids: Vec<&String> = current
        .iter()
        .filter(|a| a.starts_with("ignition.platform.id="))
        .collect();
    match ids.as_slice() {
        [] => edit.append.push(want),
        [one] if **one == want => {}
        [_] => edit.replace.push(want),
        many => {
            edit.delete.extend(many.iter().map(|s| s.to_string()));
            edit.append.push(want);
        }
    }
    for k in extra {
        if !current.contains(k) && !edit.append.contains(k) {
            edit.append.push(k.clone());
        }
    }
    edit
}

/// What provisioning a written disk did.
pub(super) struct Provisioned {
    pub(super) kargs: Vec<String>,
    pub(super) ignition: Option<String>,
}

/// Mounts the written disk's root and boot partitions and applies the platform, kernel
/// arguments, Ignition config and first-boot stamp.
pub(super) fn provision(
    disk_path: &Path,
    ignition: Option<&str>,
    platform: Platform,
    extra_kargs: &[String],
    work: &Path,
) -> Result<Provisioned> {
    let parts = partitions(disk_path)?;
    let find = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| {
                anyhow!(
                "the image written to {} has no partition named {name:?}: not a kiln disk image",
                disk_path.display()
            )
            })
    };
    let (root, boot) = (find("root")?, find("boot")?);
    let root_loop = LoopDev::attach(disk_path, root.offset, root.size)?;
    let boot_loop = LoopDev::attach(disk_path, boot.offset, boot.size)?;
    let mnt = work.join("sysroot");
    let root_mount = Mount::new(&root_loop.dev, &mnt, "ext4")?;
    let boot_mount = Mount::new(&boot_loop.dev, &mnt.join("boot"), "ext4")?;
    let bootdir = mnt.join("boot");

    let os = crate::deploy::ops::default_os(&mnt);
    let empty = crate::deploy::ops::KargsEdit::default();
    let current = crate::deploy::ops::kargs(&mnt, &os, &empty, true)
        .context("reading the installed deployment's kernel arguments")?
        .before;
    let edit = kargs_edit(&current, platform, extra_kargs);
    let kargs = if edit.is_empty() {
        current
    } else {
        crate::deploy::ops::kargs(&mnt, &os, &edit, true)
            .context("changing the installed deployment's kernel arguments")?
            .after
    };
    let ignition = match ignition {
        Some(text) => {
            image::write_ignition_config(text, &bootdir)?;
            Some(format!("/boot/{}", image::IGNITION_CONFIG))
        }
        None => None,
    };
    if !bootdir.join(firstboot::STAMP).exists() {
        firstboot::write_stamp(&bootdir)?;
    }
    boot_mount.unmount()?;
    root_mount.unmount()?;
    drop(boot_loop);
    drop(root_loop);
    Ok(Provisioned { kargs, ignition })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_is_replaced_and_kargs_appended_once() {
        let cur: Vec<String> = ["rw", "$ignition_firstboot", "ignition.platform.id=qemu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = kargs_edit(
            &cur,
            Platform::Metal,
            &["rw".into(), "a=1".into(), "a=1".into()],
        );
        assert_eq!(e.replace, vec!["ignition.platform.id=metal"]);
        assert_eq!(e.append, vec!["a=1"]);
        assert_eq!(
            e.apply(&cur).unwrap(),
            vec![
                "rw",
                "$ignition_firstboot",
                "ignition.platform.id=metal",
                "a=1"
            ]
        );
        let e = kargs_edit(&cur, Platform::Qemu, &[]);
        assert!(e.is_empty());
        let e = kargs_edit(&["rw".into()], Platform::Metal, &[]);
        assert_eq!(e.append, vec!["ignition.platform.id=metal"]);
    }
}
