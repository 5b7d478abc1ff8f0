//! `storage.raid`: software RAID arrays.

use crate::ignition::source::{KeyPath, RaidSrc};
use crate::ignition::transpile::{chk, opt_vec, R};
use crate::validate::abs_path;
use ignition_config::v3_3 as ign;

pub(super) fn check(raid: &[RaidSrc], key: &KeyPath) -> R<()> {
    for (i, r) in raid.iter().enumerate() {
        for (j, d) in r.devices.iter().enumerate() {
            chk(&key.i(i).k("devices").i(j), abs_path(d))?;
        }
    }
    Ok(())
}

pub(super) fn build(raid: &[RaidSrc]) -> Vec<ign::Raid> {
    raid.iter()
        .map(|r| ign::Raid {
            level: Some(r.level.clone()),
            devices: opt_vec(r.devices.clone()),
            spares: r.spares,
            options: opt_vec(r.options.clone()),
            ..ign::Raid::new(r.name.clone())
        })
        .collect()
}
