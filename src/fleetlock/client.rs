//! The update agent's side of FleetLock: this machine's id, the two requests, retries
//! with backoff, the hook directories and the record of a held slot. The agent
//! ([`crate::deploy::agent`]) decides when to call them.

use super::{ClientParams, ErrorBody, Request, PROTOCOL_HEADER};
use crate::updates::Fleetlock;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// kiln's application id for the machine's FleetLock id (like systemd's
/// `sd_id128_get_machine_app_specific`, as Zincati does with its own id): the machine-id
/// itself never leaves the machine, and ids of other applications cannot be linked to it.
const APP_ID: [u8; 16] = [
    0x5a, 0x25, 0x21, 0x19, 0xd1, 0x53, 0x42, 0x68, 0xb2, 0x32, 0xe4, 0xfa, 0x6a, 0x93, 0x7c, 0xf9,
];

/// Hook directories, run in the order of their file names; a file in /etc replaces the
/// file of the same name in /usr/lib (a link to /dev/null disables it).
pub const PRE_REBOOT_DIRS: [&str; 2] = ["usr/lib/kiln/pre-reboot.d", "etc/kiln/pre-reboot.d"];
pub const POST_BOOT_DIRS: [&str; 2] = ["usr/lib/kiln/post-boot.d", "etc/kiln/post-boot.d"];

/// The record of a held slot in /var/lib/kiln, written before the reboot, removed once the
/// slot is given back.
pub const SLOT_FILE: &str = "fleetlock-slot.json";

/// First and longest wait between tries.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The machine's FleetLock id from its machine-id (32 hex digits): HMAC-SHA256 keyed
/// with the machine-id over kiln's application id, first 16 bytes, as a v4 UUID in lower
/// hex without dashes (the form Zincati sends).
pub fn machine_lock_id(machine_id: &str) -> Result<String> {
    let m = machine_id.trim();
    if m.len() != 32 {
        bail!("machine-id {m:?} is not 32 hex digits");
    }
    let key = hex::decode(m).with_context(|| format!("machine-id {m:?} is not hex"))?;
    let mac = hmac_sha256(&key, &APP_ID);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(hex::encode(id))
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The FleetLock id of the system whose root is `root` (its /etc/machine-id).
pub fn lock_id_of(root: &Path) -> Result<String> {
    let p = root.join("etc/machine-id");
    let m = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    machine_lock_id(&m).with_context(|| format!("in {}", p.display()))
}

/// A server's answer other than success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// The server said no (status, its FleetLock error or the start of its body).
    Refused(u16, String),
}

/// A FleetLock client for one server, group and id.
pub struct Client {
    base: String,
    body: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(cfg: &Fleetlock, id: &str) -> Result<Client> {
        let body = serde_json::to_string(&Request {
            client_params: ClientParams {
                id: id.to_string(),
                group: cfg.group.clone(),
            },
        })?;
        Ok(Client {
            base: cfg.url.trim_end_matches('/').to_string(),
            body,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .build(),
        })
    }

    /// Asks for a reboot slot.
    pub fn pre_reboot(&self) -> Result<Reply> {
        self.post("v1/pre-reboot")
    }

    /// Gives the slot back.
    pub fn steady_state(&self) -> Result<Reply> {
        self.post("v1/steady-state")
    }

    fn post(&self, what: &str) -> Result<Reply> {
        let url = format!("{}/{what}", self.base);
        match self
            .agent
            .post(&url)
            .set(PROTOCOL_HEADER, "true")
            .set("Content-Type", "application/json")
            .send_string(&self.body)
        {
            Ok(_) => Ok(Reply::Done),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let why = match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(e) => format!("{}: {}", e.kind, e.value),
                    Err(_) => text.chars().take(200).collect(),
                };
                Ok(Reply::Refused(code, why))
            }
            Err(e) => Err(e).with_context(|| format!("POST {url}")),
        }
    }
}

/// Calls `f` until it is done, waiting 1 s, 2 s, 4 s … up to 60 s (plus a little jitter)
/// between tries, while `keep_trying` says so. Returns the last refusal or error when it
/// stopped without success.
pub fn with_backoff(
    what: &str,
    keep_trying: &dyn Fn() -> bool,
    mut f: impl FnMut() -> Result<Reply>,
) -> std::result::Result<(), String> {
    let mut wait = BACKOFF_FIRST;
    loop {
        let why = match f() {
            Ok(Reply::Done) => return Ok(()),
            Ok(Reply::Refused(code, why)) => format!("HTTP {code}: {why}"),
            Err(e) => format!("{e:#}"),
        };
        if !keep_trying() {
            return Err(why);
        }
        eprintln!("kiln: {what}: {why}; trying again in {} s", wait.as_secs());
        std::thread::sleep(wait + jitter(wait));
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = d.as_millis().max(1) as u64 / 4 + 1;
    Duration::from_millis(u64::from(nanos) % span)
}

/// Runs the hooks of `dirs` under `root` in name order; the first failure stops them.
/// Returns how many ran.
pub fn run_hooks(root: &Path, dirs: &[&str]) -> Result<usize> {
    let mut hooks: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for d in dirs {
        let dir = root.join(d);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            hooks.insert(name, e.path());
        }
    }
    let mut ran = 0;
    for (name, path) in hooks {
        let target = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if target == Path::new("/dev/null") {
            continue;
        }
        eprintln!("kiln: running hook {}", path.display());
        crate::cmd::Cmd::new(&path)
            .run()
            .with_context(|| format!("hook {name} failed"))?;
        ran += 1;
    }
    Ok(ran)
}

/// The record of a held slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub url: String,
    pub group: String,
    pub id: String,
    /// Seconds since the epoch when it was taken.
    pub taken: u64,
}

pub fn save_slot(state_dir: &Path, slot: &Slot) -> Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let p = state_dir.join(SLOT_FILE);
    let tmp = state_dir.join(format!(".{SLOT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(slot)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &p).with_context(|| format!("renaming into {}", p.display()))
}

pub fn load_slot(state_dir: &Path) -> Option<Slot> {
    let text = std::fs::read(state_dir.join(SLOT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn forget_slot(state_dir: &Path) -> Result<()> {
    let p = state_dir.join(SLOT_FILE);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// A deadline for [`with_backoff`]'s `keep_trying`.
pub fn until(deadline: Instant) -> impl Fn() -> bool {
    move || Instant::now() < deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn machine_id_is_hashed_stably_and_hidden() {
        let m = "0123456789abcdef0123456789abcdef";
        let a = machine_lock_id(m).unwrap();
        assert_eq!(a, machine_lock_id(&format!("{m}\n")).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, m);
        assert_eq!(&a[12..13], "4", "{a}: a v4 UUID");
        assert_ne!(
            a,
            machine_lock_id("0123456789abcdef0123456789abcdee").unwrap()
        );
        assert!(machine_lock_id("xyz").is_err());
    }

    #[test]
    fn hooks_run_in_name_order_and_etc_overrides() {
        use std::os::unix::fs::PermissionsExt;
        let td = tempfile::tempdir().unwrap();
        let log = td.path().join("log");
        let mk = |dir: &str, name: &str, body: &str| {
            let d = td.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let l = log.display();
        mk(PRE_REBOOT_DIRS[0], "20-b", &format!("echo usr-b >> {l}"));
        mk(PRE_REBOOT_DIRS[0], "10-a", &format!("echo usr-a >> {l}"));
        mk(PRE_REBOOT_DIRS[1], "20-b", &format!("echo etc-b >> {l}"));
        assert_eq!(run_hooks(td.path(), &PRE_REBOOT_DIRS).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "usr-a\netc-b\n");
        mk(
            PRE_REBOOT_DIRS[1],
            "15-fail",
            "echo draining failed >&2; exit 3",
        );
        let e = run_hooks(td.path(), &PRE_REBOOT_DIRS).unwrap_err();
        assert!(format!("{e:#}").contains("15-fail"), "{e:#}");
        assert!(format!("{e:#}").contains("draining failed"), "{e:#}");
    }
}
