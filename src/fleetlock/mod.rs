//! Coordinated reboots: at most K machines of a group reboot at once.
//!
//! The protocol is FleetLock (as Zincati speaks it to airlock or Kubernetes' fleetlock):
//! `POST /v1/pre-reboot` asks for a reboot slot, `POST /v1/steady-state` gives it back,
//! both with the header `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": …, "group": …}}`; a refusal or error is a 4xx/5xx status
//! with `{"kind": …, "value": …}`.
//!
//! - [`server`]: `kiln fleetlock serve`, stateless: every bit of state is in etcd
//!   ([`etcd`]), one key per group holding a [`Semaphore`], changed only by
//!   compare-and-swap transactions on the key's mod revision, so any number of servers
//!   can run behind a load balancer and any of them can die.
//! - [`client`]: the update agent's side: the machine's id, the requests, the hooks, and
//!   the steady-state step run after a good boot.
//! - [`cli`]: `kiln fleetlock serve|status|release|steady-state`.

pub mod cli;
pub mod client;
pub mod etcd;
pub mod server;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Where the semaphores live in etcd: `PREFIX` + group name.
pub const KEY_PREFIX: &str = "kiln/fleetlock/v1/groups/";

/// The header every FleetLock request carries.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// A group's reboot semaphore as stored in etcd (the same shape as airlock's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    pub total_slots: u64,
    /// Ids holding a slot, sorted.
    pub holders: Vec<String>,
}

/// A request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client_params: ClientParams,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

/// A FleetLock error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: String,
    pub value: String,
}

/// The etcd key of a group's semaphore.
pub fn group_key(group: &str) -> String {
    format!("{KEY_PREFIX}{group}")
}

/// What taking a slot came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// The id holds a slot (newly, or already: taking is idempotent, as in airlock).
    Granted(Semaphore),
    /// Every slot is held by others.
    Full(Semaphore),
}

/// Reads a group's semaphore and its mod revision (`None`: the key does not exist yet).
fn read_semaphore(etcd: &etcd::Etcd, group: &str, slots: u64) -> Result<(Semaphore, Option<i64>)> {
    let key = group_key(group);
    match etcd.get(&key)? {
        None => Ok((
            Semaphore {
                total_slots: slots,
                holders: Vec::new(),
            },
            None,
        )),
        Some(kv) => {
            let sem: Semaphore = serde_json::from_slice(&kv.value)
                .with_context(|| format!("etcd key {key:?} does not hold a semaphore"))?;
            Ok((sem, Some(kv.mod_revision)))
        }
    }
}

/// How often a compare-and-swap is retried after losing a race to another writer.
const CAS_ATTEMPTS: u32 = 64;

/// Takes a slot of `group` (size `slots`, which the server's configuration sets) for `id`.
/// Every write is a transaction that succeeds only if the key is unchanged since it was
/// read, so the holders never exceed the size whatever the number of servers.
pub fn take(etcd: &etcd::Etcd, group: &str, slots: u64, id: &str) -> Result<Taken> {
    for attempt in 0..CAS_ATTEMPTS {
        let (mut sem, rev) = read_semaphore(etcd, group, slots)?;
        if sem.holders.iter().any(|h| h == id) {
            return Ok(Taken::Granted(sem));
        }
        sem.total_slots = slots;
        if sem.holders.len() as u64 >= slots {
            return Ok(Taken::Full(sem));
        }
        sem.holders.push(id.to_string());
        sem.holders.sort();
        if etcd.put_if_unchanged(&group_key(group), &serde_json::to_vec(&sem)?, rev)? {
            return Ok(Taken::Granted(sem));
        }
        contention_pause(attempt);
    }
    bail!("group {group:?}: lost {CAS_ATTEMPTS} compare-and-swap races in a row in etcd")
}

/// Gives `id`'s slot of `group` back; true when it held one. Idempotent.
pub fn give_back(etcd: &etcd::Etcd, group: &str, slots: u64, id: &str) -> Result<bool> {
    for attempt in 0..CAS_ATTEMPTS {
        let (mut sem, rev) = read_semaphore(etcd, group, slots)?;
        let Some(i) = sem.holders.iter().position(|h| h == id) else {
            return Ok(false);
        };
        sem.holders.remove(i);
        if etcd.put_if_unchanged(&group_key(group), &serde_json::to_vec(&sem)?, rev)? {
            return Ok(true);
        }
        contention_pause(attempt);
    }
    bail!("group {group:?}: lost {CAS_ATTEMPTS} compare-and-swap races in a row in etcd")
}

/// Every group's semaphore in etcd, by group name.
pub fn all_groups(etcd: &etcd::Etcd) -> Result<Vec<(String, Semaphore)>> {
    let mut out = Vec::new();
    for (key, kv) in etcd.range_prefix(KEY_PREFIX)? {
        let group = key.strip_prefix(KEY_PREFIX).unwrap_or(&key).to_string();
        let sem: Semaphore = serde_json::from_slice(&kv.value)
            .with_context(|| format!("etcd key {key:?} does not hold a semaphore"))?;
        out.push((group, sem));
    }
    Ok(out)
}

/// A short pause that grows with the attempts and differs between processes, so writers
/// that collided do not collide again.
fn contention_pause(attempt: u32) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ms = u64::from(attempt.min(6) + 1) * 2
        + u64::from(nanos % 7)
        + u64::from(std::process::id() % 5);
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_match_the_protocol() {
        let r: Request =
            serde_json::from_str(r#"{"client_params":{"id":"abc","group":"default"}}"#).unwrap();
        assert_eq!(
            (r.client_params.id.as_str(), r.client_params.group.as_str()),
            ("abc", "default")
        );
        let e = serde_json::to_string(&ErrorBody {
            kind: "failed_lock".into(),
            value: "all 2 slots held".into(),
        })
        .unwrap();
        assert_eq!(e, r#"{"kind":"failed_lock","value":"all 2 slots held"}"#);
        let s: Semaphore = serde_json::from_str(r#"{"total_slots":2,"holders":["a"]}"#).unwrap();
        assert_eq!(s.holders, ["a"]);
    }
}
