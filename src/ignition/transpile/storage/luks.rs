//! `storage.luks`: LUKS volumes, their Clevis bindings and key files.

use crate::ignition::source::{KeyPath, LuksSrc};
use crate::ignition::transpile::resource::{chk_resource, resource};
use crate::ignition::transpile::{chk, opt_vec, Ctx, R};
use crate::validate::abs_path;
use ignition_config::v3_3 as ign;

pub(super) fn check(luks: &[LuksSrc], key: &KeyPath) -> R<()> {
    for (i, l) in luks.iter().enumerate() {
        let kl = key.i(i);
        chk(&kl.k("device"), abs_path(&l.device))?;
        if let Some(k) = &l.key_file {
            chk_resource(k, &kl.k("key_file"))?;
        }
        if let Some(c) = &l.clevis {
            for (j, t) in c.tang.iter().enumerate() {
                chk(
                    &kl.k("clevis").k("tang").i(j).k("url"),
                    crate::validate::url(&t.url, crate::validate::Schemes::Http),
                )?;
            }
        }
    }
    Ok(())
}

pub(super) fn build(ctx: &Ctx, volumes: &[LuksSrc], key: &KeyPath) -> R<Vec<ign::Luks>> {
    let mut luks = Vec::new();
    for (i, l) in volumes.iter().enumerate() {
        let kl = key.i(i);
        let key_file = l
            .key_file
            .as_ref()
            .map(|k| resource(ctx, k, &kl.k("key_file"), false))
            .transpose()?;
        luks.push(ign::Luks {
            device: Some(l.device.clone()),
            key_file,
            label: l.label.clone(),
            uuid: l.uuid.clone(),
            wipe_volume: l.wipe_volume,
            options: opt_vec(l.options.clone()),
            clevis: l.clevis.as_ref().map(|c| ign::Clevis {
                tpm2: c.tpm2,
                threshold: c.threshold,
                tang: opt_vec(
                    c.tang
                        .iter()
                        .map(|t| ign::Tang {
                            url: Some(t.url.clone()),
                            thumbprint: t.thumbprint.clone(),
                        })
                        .collect(),
                ),
                custom: c.custom.as_ref().map(|cu| ign::ClevisCustom {
                    pin: cu.pin.clone(),
                    config: cu.config.clone(),
                    needs_network: cu.needs_network,
                }),
            }),
            ..ign::Luks::new(l.name.clone())
        });
    }
    Ok(luks)
}
