//! `kiln run`: boot an image in QEMU with the serial console on stdout (and stdin: the
//! terminal is the VM's serial console; Ctrl-a x quits, Ctrl-a c toggles QEMU's monitor).

use super::accel::{accel, Accel};
use super::options::{qemu_args, Disk, VmOptions};
use super::tpm::{Swtpm, TpmState};
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The disk image (raw or qcow2).
    pub image: PathBuf,
    /// The firmware the VM boots with: SeaBIOS or OVMF.
    #[arg(long, value_enum, default_value_t = Firmware::Bios)]
    pub firmware: Firmware,
    /// The same as `--firmware uefi` (kept for scripts).
    #[arg(long, hide = true, conflicts_with = "firmware")]
    pub uefi: bool,
    /// UEFI with Secure Boot enforced: OVMF's Secure Boot build with Microsoft's keys
    /// enrolled (a fresh copy of the variables per VM), as on cloud VMs with Secure Boot.
    #[arg(long, conflicts_with = "firmware")]
    pub secure_boot: bool,
    /// Ignition config handed to the VM by fw_cfg (`opt/com.coreos/config`).
    #[arg(long)]
    pub ignition: Option<PathBuf>,
    /// Throw away every write when QEMU exits.
    #[arg(long)]
    pub snapshot: bool,
    /// Memory: MiB (`2048`), or a size with a unit (`2G`, `512M`).
    #[arg(long, default_value = "2048", value_parser = memory_mib, value_name = "MiB")]
    pub memory: u32,
    /// Virtual CPUs [default: 2 with KVM, 1 under TCG (see `default_cpus`)].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: Option<u32>,
    /// Extra disk image attached as a virtio disk (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<PathBuf>,
    /// Give the VM a TPM 2.0 (swtpm): a fresh one, removed when the VM ends.
    #[arg(long)]
    pub tpm: bool,
    /// Give the VM the TPM 2.0 whose state is kept in DIR (created when missing), so the
    /// machine finds the same TPM on its next run. Implies --tpm.
    #[arg(long, value_name = "DIR")]
    pub tpm_state: Option<PathBuf>,
    /// Forward a free port on 127.0.0.1 to the guest's ssh port (22) and print the `ssh`
    /// command that logs in (the user: the first one the Ignition config gives a key).
    #[arg(long)]
    pub ssh: bool,
}

/// A free TCP port on 127.0.0.1 (QEMU binds it a moment later).
fn free_local_port() -> Result<u16> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr().context("reading the free port")?.port())
}

/// The first user of an Ignition config that has an ssh key.
fn ssh_user(config: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["passwd"]["users"].as_array()?.iter().find_map(|u| {
        let keys = u["sshAuthorizedKeys"].as_array()?;
        (!keys.is_empty()).then(|| u["name"].as_str().map(str::to_string))?
    })
}

/// The ssh command line for a forward on `port` (host keys change with every VM, so
/// they are neither checked nor remembered).
pub fn ssh_command(port: u16, user: &str) -> String {
    format!(
        "ssh -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {user}@127.0.0.1"
    )
}

/// The firmware of `kiln run`'s VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF (UEFI).
    Uefi,
}

/// `--memory`: a bare number is MiB (QEMU's `-m`); with a unit, a size
/// ([`crate::validate::size`]) that is a whole number of MiB.
pub fn memory_mib(s: &str) -> Result<u32, String> {
    const MIB: u64 = 1024 * 1024;
    let t = s.trim();
    let bytes = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(MIB))
            .ok_or_else(|| format!("{s:?} is too large"))?
    } else {
        crate::validate::size(t)?
    };
    if bytes == 0 || bytes % MIB != 0 {
        return Err(format!("{s:?}: expected whole MiB, e.g. 2048 or 2G"));
    }
    u32::try_from(bytes / MIB).map_err(|_| format!("{s:?} is too large"))
}

/// `kiln run`.
pub fn cmd_run(a: RunArgs) -> Result<()> {
    let mut opts = VmOptions::new(&a.image, "run");
    opts.uefi = a.uefi || a.secure_boot || a.firmware == Firmware::Uefi;
    opts.secure_boot = a.secure_boot;
    opts.snapshot = a.snapshot;
    opts.memory_mb = a.memory;
    if let Some(n) = a.cpus {
        opts.cpus = n;
    }
    opts.disks = a
        .disks
        .iter()
        .map(|p| Disk {
            path: p.clone(),
            read_only: false,
            serial: None,
        })
        .collect();
    if let Some(ign) = &a.ignition {
        if !ign.is_file() {
            return Err(crate::error::InputError::new(
                ign.display().to_string(),
                "Ignition config not found",
            )
            .into());
        }
        opts.fw_cfg
            .push(("opt/com.coreos/config".into(), ign.clone()));
    }
    let mut ssh = None;
    if a.ssh {
        let port = free_local_port()?;
        opts.hostfwd.push((port, 22));
        let user = a.ignition.as_deref().and_then(ssh_user);
        ssh = Some((port, user));
    }
    if let Some(dir) = &a.tpm_state {
        let bad = |m: &str| {
            crate::error::InputError::new("command line", format!("{}: {m}", dir.display()))
                .key("--tpm-state")
        };
        if dir.exists() && !dir.is_dir() {
            return Err(bad("not a directory").into());
        }
        if dir.to_string_lossy().contains(',') {
            return Err(bad("swtpm cannot use a path with a ',' in it").into());
        }
    }
    opts.tpm = match (&a.tpm_state, a.tpm) {
        (Some(dir), _) => Some(TpmState::Dir(dir.clone())),
        (None, true) => Some(TpmState::Fresh),
        (None, false) => None,
    };
    // Removed on every exit path, SIGINT/SIGTERM included (the TPM's fresh state too).
    let work = crate::cleanup::TempDir::new("kiln-run-")?;
    let _tpm = match &opts.tpm {
        Some(state) => Some(Swtpm::start(state, work.path())?),
        None => None,
    };
    let mut args = qemu_args(&opts, work.path())?;
    args.extend(["-serial".to_string(), "mon:stdio".to_string()]);
    if accel() == Accel::Tcg {
        eprintln!("kiln: KVM is not usable here; using TCG (slow).");
    } else {
        eprintln!("kiln: using KVM.");
    }
    eprintln!(
        "kiln: this terminal is the VM's serial console. Ctrl-a x quits (powers the VM off), \
         Ctrl-a c switches to QEMU's monitor and back, Ctrl-a h lists the keys."
    );
    if let Some((port, user)) = &ssh {
        let who = user.as_deref().unwrap_or("USER");
        eprintln!("kiln: once the VM is up: {}", ssh_command(*port, who));
        if user.is_none() {
            eprintln!("kiln: (USER: a user the Ignition config gives an ssh key)");
        }
    }
    let st = Cmd::new("qemu-system-x86_64").args(&args).run_inherit()?;
    if !st.success() {
        bail!("QEMU exited with {st}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn memory_is_mib_or_a_size() {
        assert_eq!(memory_mib("2048"), Ok(2048));
        assert_eq!(memory_mib("2048M"), Ok(2048));
        assert_eq!(memory_mib("2G"), Ok(2048));
        assert!(memory_mib("0").is_err());
        assert!(memory_mib("1000K").is_err());
        assert!(memory_mib("lots").is_err());
        assert!(memory_mib("99999999999").is_err());
    }

    #[test]
    fn firmware_is_one_option_and_uefi_still_works() {
        let t = T::try_parse_from(["t", "img", "--firmware", "uefi"]).unwrap();
        assert_eq!(t.run.firmware, Firmware::Uefi);
        let t = T::try_parse_from(["t", "img", "--uefi", "--memory", "1G"]).unwrap();
        assert!(t.run.uefi);
        assert_eq!(t.run.memory, 1024);
        let t = T::try_parse_from(["t", "img"]).unwrap();
        assert_eq!((t.run.firmware, t.run.memory), (Firmware::Bios, 2048));
        assert!(T::try_parse_from(["t", "img", "--uefi", "--firmware", "bios"]).is_err());
        assert!(T::try_parse_from(["t", "img", "--memory", "x"]).is_err());
        let t = T::try_parse_from(["t", "img", "--secure-boot"]).unwrap();
        assert!(t.run.secure_boot);
        assert!(T::try_parse_from(["t", "img", "--secure-boot", "--firmware", "bios"]).is_err());
    }

    #[test]
    fn tpm_is_fresh_or_a_kept_state() {
        let t = T::try_parse_from(["t", "img", "--tpm"]).unwrap();
        assert!(t.run.tpm && t.run.tpm_state.is_none());
        let t = T::try_parse_from(["t", "img", "--tpm-state", "st"]).unwrap();
        assert_eq!(t.run.tpm_state, Some(PathBuf::from("st")));
        let t = T::try_parse_from(["t", "img"]).unwrap();
        assert!(!t.run.tpm && t.run.tpm_state.is_none());
        // A state "directory" swtpm cannot use is bad input, found before QEMU starts.
        for bad in ["/etc/hostname", "/tmp/a,b"] {
            let t = T::try_parse_from(["t", "img", "--tpm-state", bad]).unwrap();
            let e = cmd_run(t.run).unwrap_err();
            assert!(
                e.downcast_ref::<crate::error::InputError>().is_some(),
                "{e:#}"
            );
        }
    }

    #[test]
    fn ssh_user_is_the_first_with_a_key() {
        let td = tempfile::tempdir().unwrap();
        let c = td.path().join("c.ign");
        std::fs::write(
            &c,
            r#"{"ignition":{"version":"3.3.0"},"passwd":{"users":[
                {"name":"nokey"},{"name":"admin","sshAuthorizedKeys":["ssh-ed25519 AAA x"]}]}}"#,
        )
        .unwrap();
        assert_eq!(ssh_user(&c).as_deref(), Some("admin"));
        std::fs::write(&c, r#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
        assert_eq!(ssh_user(&c), None);
        let p = free_local_port().unwrap();
        let c = ssh_command(p, "admin");
        assert!(c.starts_with(&format!("ssh -p {p} ")), "{c}");
        assert!(c.ends_with(" admin@127.0.0.1"), "{c}");
    }
}
