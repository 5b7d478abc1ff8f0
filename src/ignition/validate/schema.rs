//! The schema pass: the keys and types of each object in spec 3.0–3.3, unknown keys as
//! warnings, keys newer than the config's version named as such.

use super::{is_null, Severity, Validator, P};
use crate::ignition::json::{Kind, Node};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ty {
    Str,
    Int,
    Bool,
    Obj(Def),
    ArrStr,
    ArrObj(Def),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Def {
    Config,
    Ignition,
    IgnitionConfig,
    Proxy,
    Security,
    Tls,
    Timeouts,
    Kargs,
    Passwd,
    User,
    Group,
    Resource,
    FileContents,
    Header,
    Verification,
    Storage,
    File,
    Directory,
    Link,
    NodeUser,
    NodeGroup,
    Disk,
    Partition,
    Filesystem,
    Luks,
    Clevis,
    ClevisCustom,
    Tang,
    Raid,
    Systemd,
    Unit,
    Dropin,
}

/// Keys added by later spec versions: (minor version, object, key, type).
const ADDED: &[(u8, Def, &str, Ty)] = &[
    (1, Def::Ignition, "proxy", Ty::Obj(Def::Proxy)),
    (1, Def::Resource, "compression", Ty::Str),
    (1, Def::Resource, "httpHeaders", Ty::ArrObj(Def::Header)),
    (1, Def::FileContents, "httpHeaders", Ty::ArrObj(Def::Header)),
    (1, Def::Filesystem, "mountOptions", Ty::ArrStr),
    (2, Def::Storage, "luks", Ty::ArrObj(Def::Luks)),
    (2, Def::User, "shouldExist", Ty::Bool),
    (2, Def::Group, "shouldExist", Ty::Bool),
    (2, Def::Partition, "resize", Ty::Bool),
    (3, Def::Config, "kernelArguments", Ty::Obj(Def::Kargs)),
];

/// The keys files, directories and links share.
const NODE: [(&str, Ty); 4] = [
    ("group", Ty::Obj(Def::NodeGroup)),
    ("overwrite", Ty::Bool),
    ("path", Ty::Str),
    ("user", Ty::Obj(Def::NodeUser)),
];

/// The keys of each object in spec 3.`minor`, from the Ignition spec's types.
fn fields(def: Def, minor: u8) -> Vec<(&'static str, Ty)> {
    use Def as D;
    use Ty::*;
    let mut f: Vec<(&'static str, Ty)> = match def {
        D::Config => vec![
            ("ignition", Obj(D::Ignition)),
            ("passwd", Obj(D::Passwd)),
            ("storage", Obj(D::Storage)),
            ("systemd", Obj(D::Systemd)),
        ],
        D::Ignition => vec![
            ("config", Obj(D::IgnitionConfig)),
            ("security", Obj(D::Security)),
            ("timeouts", Obj(D::Timeouts)),
            ("version", Str),
        ],
        D::IgnitionConfig => vec![
            ("merge", ArrObj(D::Resource)),
            ("replace", Obj(D::Resource)),
        ],
        D::Proxy => vec![("httpProxy", Str), ("httpsProxy", Str), ("noProxy", ArrStr)],
        D::Security => vec![("tls", Obj(D::Tls))],
        D::Tls => vec![("certificateAuthorities", ArrObj(D::Resource))],
        D::Timeouts => vec![("httpResponseHeaders", Int), ("httpTotal", Int)],
        D::Kargs => vec![("shouldExist", ArrStr), ("shouldNotExist", ArrStr)],
        D::Passwd => vec![("groups", ArrObj(D::Group)), ("users", ArrObj(D::User))],
        D::User => vec![
            ("gecos", Str),
            ("groups", ArrStr),
            ("homeDir", Str),
            ("name", Str),
            ("noCreateHome", Bool),
            ("noLogInit", Bool),
            ("noUserGroup", Bool),
            ("passwordHash", Str),
            ("primaryGroup", Str),
            ("sshAuthorizedKeys", ArrStr),
            ("shell", Str),
            ("system", Bool),
            ("uid", Int),
        ],
        D::Group => vec![
            ("gid", Int),
            ("name", Str),
            ("passwordHash", Str),
            ("system", Bool),
        ],
        D::Resource => vec![("source", Str), ("verification", Obj(D::Verification))],
        D::FileContents => vec![
            ("compression", Str),
            ("source", Str),
            ("verification", Obj(D::Verification)),
        ],
        D::Header => vec![("name", Str), ("value", Str)],
        D::Verification => vec![("hash", Str)],
        D::Storage => vec![
            ("directories", ArrObj(D::Directory)),
            ("disks", ArrObj(D::Disk)),
            ("files", ArrObj(D::File)),
            ("filesystems", ArrObj(D::Filesystem)),
            ("links", ArrObj(D::Link)),
            ("raid", ArrObj(D::Raid)),
        ],
        D::File => {
            let mut v = NODE.to_vec();
            v.extend([
                ("append", ArrObj(D::FileContents)),
                ("contents", Obj(D::FileContents)),
                ("mode", Int),
            ]);
            v
        }
        D::Directory => {
            let mut v = NODE.to_vec();
            v.push(("mode", Int));
            v
        }
        D::Link => {
            let mut v = NODE.to_vec();
            v.extend([("hard", Bool), ("target", Str)]);
            v
        }
        D::NodeUser | D::NodeGroup => vec![("id", Int), ("name", Str)],
        D::Disk => vec![
            ("device", Str),
            ("partitions", ArrObj(D::Partition)),
            ("wipeTable", Bool),
        ],
        D::Partition => vec![
            ("guid", Str),
            ("label", Str),
            ("number", Int),
            ("shouldExist", Bool),
            ("sizeMiB", Int),
            ("startMiB", Int),
            ("typeGuid", Str),
            ("wipePartitionEntry", Bool),
        ],
        D::Filesystem => vec![
            ("device", Str),
            ("format", Str),
            ("label", Str),
            ("options", ArrStr),
            ("path", Str),
            ("uuid", Str),
            ("wipeFilesystem", Bool),
        ],
        D::Luks => vec![
            ("clevis", Obj(D::Clevis)),
            ("device", Str),
            ("keyFile", Obj(D::Resource)),
            ("label", Str),
            ("name", Str),
            ("options", ArrStr),
            ("uuid", Str),
            ("wipeVolume", Bool),
        ],
        D::Clevis => vec![
            ("custom", Obj(D::ClevisCustom)),
            ("tang", ArrObj(D::Tang)),
            ("threshold", Int),
            ("tpm2", Bool),
        ],
        D::ClevisCustom => vec![("config", Str), ("needsNetwork", Bool), ("pin", Str)],
        D::Tang => vec![("thumbprint", Str), ("url", Str)],
        D::Raid => vec![
            ("devices", ArrStr),
            ("level", Str),
            ("name", Str),
            ("options", ArrStr),
            ("spares", Int),
        ],
        D::Systemd => vec![("units", ArrObj(D::Unit))],
        D::Unit => vec![
            ("contents", Str),
            ("dropins", ArrObj(D::Dropin)),
            ("enabled", Bool),
            ("mask", Bool),
            ("name", Str),
        ],
        D::Dropin => vec![("contents", Str), ("name", Str)],
    };
    for (m, d, k, t) in ADDED {
        if *d == def && minor >= *m {
            f.push((k, *t));
        }
    }
    f
}

impl Validator<'_> {
    pub(super) fn check_type(&mut self, n: &Node, ty: Ty, p: &mut P) {
        if is_null(n) {
            return; // Go leaves the field at its zero value.
        }
        let want = match ty {
            Ty::Str => "string",
            Ty::Int => "integer",
            Ty::Bool => "boolean",
            Ty::Obj(_) => "object",
            Ty::ArrStr | Ty::ArrObj(_) => "array",
        };
        let ok = match (&n.kind, ty) {
            (Kind::Str(_), Ty::Str) | (Kind::Bool(_), Ty::Bool) => true,
            (Kind::Num(raw), Ty::Int) => {
                if raw.parse::<i64>().is_err() {
                    let pos = n.pos;
                    self.push_at(
                        Severity::Error,
                        p,
                        pos,
                        format!("expected an integer, found the number {raw}"),
                    );
                }
                return;
            }
            (Kind::Obj(members), Ty::Obj(def)) => {
                let fs = fields(def, self.minor);
                for m in members {
                    // Go fills a field from a key that differs only in case, and
                    // Ignition still calls that key unused.
                    if let Some((_, t)) = fs
                        .iter()
                        .find(|(k, _)| *k != m.key && k.eq_ignore_ascii_case(&m.key))
                    {
                        let mut child = p.k(&m.key);
                        self.check_type(&m.value, *t, &mut child);
                    }
                    match fs.iter().find(|(k, _)| *k == m.key) {
                        Some((_, t)) => {
                            let mut child = p.k(&m.key);
                            self.check_type(&m.value, *t, &mut child);
                        }
                        None => {
                            let later = (self.minor + 1..=3)
                                .any(|mi| fields(def, mi).iter().any(|(k, _)| *k == m.key));
                            let msg = if later {
                                format!(
                                    "Unused key {}: not in spec 3.{}.0 (a later spec version has it)",
                                    m.key, self.minor
                                )
                            } else {
                                format!("Unused key {}", m.key)
                            };
                            let pos = m.key_pos;
                            self.push_at(Severity::Warning, &p.k(&m.key), pos, msg);
                        }
                    }
                }
                true
            }
            (Kind::Arr(items), Ty::ArrStr | Ty::ArrObj(_)) => {
                let et = match ty {
                    Ty::ArrObj(d) => Ty::Obj(d),
                    _ => Ty::Str,
                };
                for (i, it) in items.iter().enumerate() {
                    let mut child = p.i(i);
                    self.check_type(it, et, &mut child);
                }
                true
            }
            _ => false,
        };
        if !ok {
            let pos = n.pos;
            let msg = format!("expected {want}, found {}", n.type_name());
            self.push_at(Severity::Error, p, pos, msg);
        }
    }
}
