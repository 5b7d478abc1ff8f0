//! `kiln fleetlock serve|status|release|steady-state`.

use super::etcd::Etcd;
use super::server::{Options, Server};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum FleetlockCommand {
    /// Serve the FleetLock protocol (POST /v1/pre-reboot, /v1/steady-state; GET /metrics),
    /// every bit of state in etcd: run as many instances as you like.
    Serve(ServeArgs),
    /// Show every group's slots and holders, from etcd.
    Status(StatusArgs),
    /// Give back the slot a machine holds (one that died holding it, say), in etcd.
    Release(ReleaseArgs),
    /// Give this machine's slot back once the boot is marked good, then run the post-boot
    /// hooks (what kiln-fleetlock-steady.service runs).
    SteadyState(SteadyArgs),
}

#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated or repeated (http://10.0.0.1:2379,…).
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_etcd_url)]
    pub etcd: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub listen: std::net::SocketAddr,
    /// A group and its number of slots (machines allowed to reboot at once), NAME=SLOTS;
    /// repeatable. Requests for other groups are refused.
    #[arg(long = "group", value_parser = parse_group, default_value = "default=1")]
    pub groups: Vec<(String, u64)>,
    /// Worker threads answering requests.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The holder's id, as `kiln fleetlock status` shows it.
    #[arg(value_parser = parse_id)]
    pub id: String,
    /// Only in this group (default: every group).
    #[arg(long, value_parser = parse_group_name)]
    pub group: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub sys: crate::deploy::cli::SysrootArgs,
    /// The file kiln-health.service creates once the boot is good.
    #[arg(long, default_value = "/run/kiln/boot-good", value_parser = crate::deploy::cli::parse_abs_path)]
    pub boot_good: PathBuf,
    /// How long to keep trying while the server is away (90s, 30min, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub patience: u64,
}

fn parse_etcd_url(s: &str) -> Result<String, String> {
    crate::validate::url(s, crate::validate::Schemes::Http).map(|()| s.to_string())
}

fn parse_group_name(s: &str) -> Result<String, String> {
    crate::validate::lock_group(s).map(|()| s.to_string())
}

fn parse_id(s: &str) -> Result<String, String> {
    crate::validate::lock_holder_id(s).map(|()| s.to_string())
}

fn parse_duration(s: &str) -> Result<u64, String> {
    crate::updates::parse_duration(s)
}

fn parse_group(s: &str) -> Result<(String, u64), String> {
    let Some((name, n)) = s.split_once('=') else {
        return Err(format!("{s:?}: expected NAME=SLOTS, e.g. default=2"));
    };
    crate::validate::lock_group(name)?;
    match n.parse::<u64>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok((name.to_string(), n)),
        _ => Err(format!(
            "{s:?}: the number of slots must be a whole number from 1 to 100000"
        )),
    }
}

const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

pub fn cmd(c: FleetlockCommand) -> Result<()> {
    match c {
        FleetlockCommand::Serve(a) => serve(a),
        FleetlockCommand::Status(a) => status(a),
        FleetlockCommand::Release(a) => release(a),
        FleetlockCommand::SteadyState(a) => steady_state(a),
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let groups: BTreeMap<String, u64> = a.groups.into_iter().collect();
    let server = Server::start(Options {
        etcd: a.etcd.etcd.clone(),
        listen: a.listen.to_string(),
        groups: groups.clone(),
        threads: usize::from(a.threads),
        etcd_timeout: ETCD_TIMEOUT,
    })?;
    eprintln!(
        "kiln fleetlock: listening on {} (etcd {}; groups {})",
        server.addr,
        a.etcd.etcd.join(","),
        groups
            .iter()
            .map(|(g, n)| format!("{g}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    server.wait();
    Ok(())
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupStatus {
    group: String,
    total_slots: u64,
    holders: Vec<String>,
}

fn status(a: StatusArgs) -> Result<()> {
    let etcd = Etcd::new(&a.etcd.etcd, ETCD_TIMEOUT);
    let groups: Vec<GroupStatus> = super::all_groups(&etcd)?
        .into_iter()
        .map(|(group, s)| GroupStatus {
            group,
            total_slots: s.total_slots,
            holders: s.holders,
        })
        .collect();
    crate::output::emit(a.json, &groups, |groups| {
        if groups.is_empty() {
            println!("No group has been used yet.");
        }
        for g in groups {
            println!(
                "{}: {} of {} slots held{}{}",
                g.group,
                g.holders.len(),
                g.total_slots,
                if g.holders.is_empty() { "" } else { ": " },
                g.holders.join(", ")
            );
        }
    })
}

fn release(a: ReleaseArgs) -> Result<()> {
    let etcd = Etcd::new(&a.etcd.etcd, ETCD_TIMEOUT);
    let mut released = Vec::new();
    for (group, sem) in super::all_groups(&etcd)? {
        if a.group.as_ref().is_some_and(|g| *g != group) || !sem.holders.contains(&a.id) {
            continue;
        }
        if super::give_back(&etcd, &group, sem.total_slots, &a.id)? {
            released.push(group);
        }
    }
    if released.is_empty() {
        bail!(
            "{} holds no slot{}",
            a.id,
            match &a.group {
                Some(g) => format!(" in group {g:?}"),
                None => String::new(),
            }
        );
    }
    println!("Released the slot of {} in {}.", a.id, released.join(", "));
    Ok(())
}

fn steady_state(a: SteadyArgs) -> Result<()> {
    let os = a.sys.os();
    let out = crate::deploy::agent::run_steady_state(
        &a.sys.sysroot,
        &os,
        &a.boot_good,
        Duration::from_secs(a.patience),
    )?;
    crate::output::emit(a.sys.json, &out, |o| {
        if o.fleetlock {
            println!(
                "Reboot slot of {} given back (group {}); {} post-boot hook(s) run.",
                o.id.as_deref().unwrap_or(""),
                o.group.as_deref().unwrap_or(""),
                o.hooks
            );
        } else {
            println!("The update policy does not use FleetLock: nothing to give back.");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_flags() {
        assert_eq!(parse_group("default=2"), Ok(("default".into(), 2)));
        assert!(parse_group("default").is_err());
        assert!(parse_group("default=0").is_err());
        assert!(parse_group("a/b=1").is_err());
    }
}
