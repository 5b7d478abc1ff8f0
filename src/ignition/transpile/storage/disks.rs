//! `storage.disks` and their partitions.

use crate::ignition::source::{DiskSrc, KeyPath};
use crate::ignition::transpile::{chk, opt_vec, terr, R};
use crate::validate::abs_path;
use ignition_config::v3_3 as ign;

fn chk_mib(v: Option<i64>, key: &KeyPath) -> R<()> {
    match v {
        Some(n) if n < 0 => Err(terr(
            key,
            format!("{n} MiB: a size or offset cannot be negative"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn check(disks: &[DiskSrc], key: &KeyPath) -> R<()> {
    for (i, d) in disks.iter().enumerate() {
        let kd = key.i(i);
        chk(&kd.k("device"), abs_path(&d.device))?;
        for (j, p) in d.partitions.iter().enumerate() {
            let kp = kd.k("partitions").i(j);
            if let Some(n) = p.number {
                if !(0..=128).contains(&n) {
                    return Err(terr(
                        &kp.k("number"),
                        format!("partition number {n}: GPT numbers partitions 1-128 (0: the next free one)"),
                    ));
                }
            }
            chk_mib(p.size_mib, &kp.k("size_mib"))?;
            chk_mib(p.start_mib, &kp.k("start_mib"))?;
            if let Some(l) = &p.label {
                if l.contains(':') || l.chars().any(char::is_control) {
                    return Err(terr(
                        &kp.k("label"),
                        format!("partition label {l:?} contains ':' or a control character, which sgdisk cannot set"),
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(super) fn build(disks: &[DiskSrc]) -> Vec<ign::Disk> {
    disks
        .iter()
        .map(|d| ign::Disk {
            wipe_table: d.wipe_table,
            partitions: opt_vec(
                d.partitions
                    .iter()
                    .map(|p| ign::Partition {
                        label: p.label.clone(),
                        number: p.number,
                        size_mib: p.size_mib,
                        start_mib: p.start_mib,
                        type_guid: p.type_guid.clone(),
                        guid: p.guid.clone(),
                        wipe_partition_entry: p.wipe_partition_entry,
                        should_exist: p.should_exist,
                        resize: p.resize,
                    })
                    .collect(),
            ),
            ..ign::Disk::new(d.device.clone())
        })
        .collect()
}
