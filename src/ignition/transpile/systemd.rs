//! The `systemd` section: units and their drop-ins, plus the mount units that
//! `storage.filesystems` asks for.

use super::{chk, opt_vec, terr, Ctx, R};
use crate::ignition::source::{KeyPath, SystemdSrc};
use ignition_config::v3_3 as ign;

pub(super) fn check(s: &SystemdSrc, key: &KeyPath) -> R<()> {
    let kd = key.k("units");
    for (i, u) in s.units.iter().enumerate() {
        let ku = kd.i(i);
        chk(&ku.k("name"), crate::recipe::validate::unit_name(&u.name))?;
        for (j, d) in u.dropins.iter().enumerate() {
            let n = &d.name;
            if n.is_empty()
                || n.contains('/')
                || n.starts_with('.')
                || n.chars().any(char::is_control)
            {
                return Err(terr(
                    &ku.k("dropins").i(j).k("name"),
                    format!("drop-in name {n:?} must be a plain file name such as 10-env.conf"),
                ));
            }
        }
    }
    Ok(())
}

/// A unit's or drop-in's text: `contents`, or the `contents_local` file read in.
fn text(
    ctx: &Ctx,
    contents: &Option<String>,
    local: &Option<String>,
    key: &KeyPath,
) -> R<Option<String>> {
    match (contents, local) {
        (Some(_), Some(_)) => Err(terr(
            &key.k("contents_local"),
            "give contents or contents_local, not both",
        )),
        (Some(c), None) => Ok(Some(c.clone())),
        (None, Some(l)) => ctx.read_local_text(l, &key.k("contents_local")).map(Some),
        (None, None) => Ok(None),
    }
}

/// The units, then each mount unit whose name the user's units do not already take.
pub(super) fn build(
    ctx: &Ctx,
    s: &SystemdSrc,
    key: &KeyPath,
    mount_units: Vec<ign::Unit>,
) -> R<Option<ign::Systemd>> {
    let kd = key.k("units");
    let mut units = Vec::new();
    for (i, u) in s.units.iter().enumerate() {
        let ku = kd.i(i);
        let contents = text(ctx, &u.contents, &u.contents_local, &ku)?;
        let mut dropins = Vec::new();
        for (j, d) in u.dropins.iter().enumerate() {
            let c = text(ctx, &d.contents, &d.contents_local, &ku.k("dropins").i(j))?;
            dropins.push(ign::Dropin {
                contents: c,
                ..ign::Dropin::new(d.name.clone())
            });
        }
        units.push(ign::Unit {
            contents,
            enabled: u.enabled,
            mask: u.mask,
            dropins: opt_vec(dropins),
            ..ign::Unit::new(u.name.clone())
        });
    }
    for m in mount_units {
        if units.iter().any(|u| u.name == m.name) {
            continue; // the user's own unit of that name wins
        }
        units.push(m);
    }
    if units.is_empty() {
        return Ok(None);
    }
    Ok(Some(ign::Systemd { units: Some(units) }))
}
