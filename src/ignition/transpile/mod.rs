//! Source -> Ignition spec 3.3.0, through the `ignition-config` crate's types.
//!
//! One file per Ignition section, mirroring the validator: [`ignition`], [`passwd`],
//! [`storage`] (a folder, like the validator's), [`systemd`] and [`kargs`]. Each has a
//! `check` (every value checked at the door with its kind's rule) and a `build` (the
//! section's Ignition types); [`check_values`] and [`transpile`] call them in order.
//! Resources and the data URLs they embed, which several sections share, are in
//! [`resource`].

mod ignition;
mod kargs;
mod passwd;
mod resource;
mod storage;
mod systemd;

pub use resource::data_url;
pub use storage::systemd_escape_path;

use super::source::*;
use ignition_config::v3_3 as ign;
use std::path::{Path, PathBuf};

/// A transpile error at a key path of the (merged) source.
#[derive(Debug)]
pub struct TErr {
    pub key: KeyPath,
    pub message: String,
}

type R<T> = Result<T, TErr>;

fn terr(key: &KeyPath, m: impl Into<String>) -> TErr {
    TErr {
        key: key.clone(),
        message: m.into(),
    }
}

pub struct Ctx<'a> {
    /// Base directory of `local` references.
    pub files_dir: &'a Path,
}

/// The largest local file a config embeds: the whole config must fit in memory, in an
/// ISO's Ignition area or a cloud's user-data.
pub const LOCAL_MAX: u64 = 64 * 1024 * 1024;

impl Ctx<'_> {
    /// Resolves a `local` reference to a host path inside files_dir after every symlink is
    /// followed ([`crate::validate::path_in_dir`]): a link out of the files directory
    /// (`key -> /etc/shadow`) is refused, never read.
    fn local_path(&self, rel: &str, key: &KeyPath) -> R<PathBuf> {
        crate::validate::path_in_dir(self.files_dir, rel).map_err(|m| {
            terr(
                key,
                format!(
                    "local path {rel:?}: {m} (a local path must name a file inside the files \
                     directory and stay inside it; set the directory with --files-dir)"
                ),
            )
        })
    }

    /// Reads a `local` file: inside files_dir, a regular file (a FIFO, socket or device is
    /// refused without blocking on it), at most [`LOCAL_MAX`] bytes.
    fn read_local(&self, rel: &str, key: &KeyPath) -> R<Vec<u8>> {
        let p = self.local_path(rel, key)?;
        crate::validate::read_regular_file(&p, LOCAL_MAX)
            .map_err(|m| terr(key, format!("cannot read local file {rel:?}: {m}")))
    }

    fn read_local_text(&self, rel: &str, key: &KeyPath) -> R<String> {
        let b = self.read_local(rel, key)?;
        String::from_utf8(b).map_err(|_| terr(key, format!("local file {rel:?} is not UTF-8 text")))
    }
}

fn owner_user(o: &Option<OwnerSrc>) -> Option<ign::NodeUser> {
    o.as_ref().map(|o| ign::NodeUser {
        id: o.id,
        name: o.name.clone(),
    })
}

fn owner_group(o: &Option<OwnerSrc>) -> Option<ign::NodeGroup> {
    o.as_ref().map(|o| ign::NodeGroup {
        id: o.id,
        name: o.name.clone(),
    })
}

fn opt_vec<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

// ---------------------------------------------------------------------------------------
// Values checked at the door: each with the crate's one rule for its kind
// (crate::validate, crate::recipe::validate::unit_name), so a config that Ignition's own
// validation would accept but that fails at first boot (useradd refusing a name, a unit
// written outside /etc/systemd/system, a uid of -1) is refused at build time, located.

fn chk(key: &KeyPath, r: Result<(), String>) -> R<()> {
    r.map_err(|m| terr(key, m))
}

fn chk_owner(o: &Option<OwnerSrc>, key: &KeyPath) -> R<()> {
    if let Some(o) = o {
        if let Some(n) = &o.name {
            chk(&key.k("name"), crate::validate::account_name(n))?;
        }
        if let Some(id) = o.id {
            chk(&key.k("id"), crate::validate::account_id(id))?;
        }
    }
    Ok(())
}

/// Checks every value of the source with its kind's rule.
pub fn check_values(s: &Source) -> R<()> {
    let root = KeyPath::default();
    ignition::check(&s.ignition, &root.k("ignition"))?;
    passwd::check(&s.passwd, &root.k("passwd"))?;
    let units: Vec<&str> = s.systemd.units.iter().map(|u| u.name.as_str()).collect();
    storage::check(&s.storage, &units, &root.k("storage"))?;
    systemd::check(&s.systemd, &root.k("systemd"))?;
    kargs::check(&s.kernel_arguments, &root.k("kernel_arguments"))
}

/// Builds the Ignition config from a merged source.
pub fn transpile(ctx: &Ctx, s: &Source) -> R<ign::Config> {
    check_values(s)?;
    let mut cfg = ign::Config::default();
    let root = KeyPath::default();
    ignition::build(ctx, &s.ignition, &root.k("ignition"), &mut cfg.ignition)?;
    cfg.passwd = passwd::build(ctx, &s.passwd, &root.k("passwd"))?;
    let (storage, mount_units) = storage::build(ctx, &s.storage, &root.k("storage"))?;
    cfg.storage = storage;
    cfg.systemd = systemd::build(ctx, &s.systemd, &root.k("systemd"), mount_units)?;
    cfg.kernel_arguments = kargs::build(&s.kernel_arguments);
    Ok(cfg)
}

/// Serializes without the `null`s the crate's types carry for unset fields.
pub fn to_json(cfg: &ign::Config) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    strip(&mut v);
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}
