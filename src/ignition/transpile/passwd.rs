//! The `passwd` section: users (with their SSH keys, local key files read in) and
//! groups.

use super::{chk, opt_vec, Ctx, R};
use crate::ignition::source::{KeyPath, PasswdSrc};
use crate::validate::{abs_path, account_id, account_name};
use ignition_config::v3_3 as ign;

pub(super) fn check(s: &PasswdSrc, kp: &KeyPath) -> R<()> {
    for (i, u) in s.users.iter().enumerate() {
        let ku = kp.k("users").i(i);
        chk(&ku.k("name"), account_name(&u.name))?;
        if let Some(id) = u.uid {
            chk(&ku.k("uid"), account_id(id))?;
        }
        for (j, g) in u.groups.iter().enumerate() {
            chk(&ku.k("groups").i(j), account_name(g))?;
        }
        if let Some(g) = &u.primary_group {
            chk(&ku.k("primary_group"), account_name(g))?;
        }
        if let Some(h) = &u.home_dir {
            chk(&ku.k("home_dir"), abs_path(h))?;
        }
        if let Some(sh) = &u.shell {
            chk(&ku.k("shell"), abs_path(sh))?;
        }
    }
    for (i, g) in s.groups.iter().enumerate() {
        let kg = kp.k("groups").i(i);
        chk(&kg.k("name"), account_name(&g.name))?;
        if let Some(id) = g.gid {
            chk(&kg.k("gid"), account_id(id))?;
        }
    }
    Ok(())
}

pub(super) fn build(ctx: &Ctx, s: &PasswdSrc, kp: &KeyPath) -> R<Option<ign::Passwd>> {
    let mut users = Vec::new();
    for (i, u) in s.users.iter().enumerate() {
        let ku = kp.k("users").i(i);
        let mut keys = u.ssh_authorized_keys.clone();
        for (j, f) in u.ssh_authorized_keys_local.iter().enumerate() {
            let text = ctx.read_local_text(f, &ku.k("ssh_authorized_keys_local").i(j))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        users.push(ign::User {
            uid: u.uid,
            password_hash: u.password_hash.clone(),
            ssh_authorized_keys: opt_vec(keys),
            groups: opt_vec(u.groups.clone()),
            primary_group: u.primary_group.clone(),
            shell: u.shell.clone(),
            home_dir: u.home_dir.clone(),
            gecos: u.gecos.clone(),
            system: u.system,
            no_create_home: u.no_create_home,
            no_user_group: u.no_user_group,
            no_log_init: u.no_log_init,
            should_exist: u.should_exist,
            ..ign::User::new(u.name.clone())
        });
    }
    let groups: Vec<_> = s
        .groups
        .iter()
        .map(|g| ign::Group {
            gid: g.gid,
            password_hash: g.password_hash.clone(),
            system: g.system,
            should_exist: g.should_exist,
            ..ign::Group::new(g.name.clone())
        })
        .collect();
    if users.is_empty() && groups.is_empty() {
        return Ok(None);
    }
    Ok(Some(ign::Passwd {
        users: opt_vec(users),
        groups: opt_vec(groups),
    }))
}
