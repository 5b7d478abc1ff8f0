//! How to boot a VM ([`VmOptions`]) and QEMU's command line for it.

use super::accel::{accel, default_cpus, Accel};
use super::optstr::{opt_path, opt_value};
use super::tpm::TpmState;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the OVMF firmware lives (Debian's `ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (needs SMM and the secure pflash), and variables with
/// Microsoft's keys enrolled (what signed shim is checked against) and enforcement on.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// An extra disk for the VM.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// Shows up in the guest as `/dev/disk/by-id/virtio-SERIAL`.
    pub serial: Option<String>,
}

/// How to boot a VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The boot disk; an empty path means none (boot from `cdrom` or the network).
    pub image: PathBuf,
    /// Name used for the console log artifact (`NAME.log`).
    pub name: String,
    pub uefi: bool,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Writes go to a temp overlay dropped when QEMU exits (they survive guest reboots).
    pub snapshot: bool,
    pub disks: Vec<Disk>,
    /// `-fw_cfg name=NAME,file=PATH` entries (Ignition: `opt/com.coreos/config`).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// User networking with `restrict=on` (nothing leaves the VM) ...
    pub network: bool,
    /// ... except these forwards: guest `ADDR:PORT` → host `127.0.0.1:PORT`.
    pub guestfwd: Vec<(String, u16)>,
    /// Where the console log goes on failure; default `build/test-artifacts`.
    pub artifacts: PathBuf,
    /// An ISO in a CD drive (`-cdrom`: the q35 AHCI controller), booted first.
    pub cdrom: Option<PathBuf>,
    /// Network boot: QEMU's built-in TFTP server serves DIR and DHCP hands out FILE as
    /// the boot file (firmware's iPXE boots it); the NIC is booted first. Implies
    /// `network` (still `restrict=on`).
    pub tftp: Option<(PathBuf, String)>,
    /// A QMP monitor socket ([`Vm::qmp`], [`Vm::reset`], [`Vm::monitor`]): tests that
    /// hard-reset the guest ask for it.
    pub monitor: bool,
    /// Resume from a state file written by [`Vm::save`](super::Vm::save) instead of
    /// booting (implies a monitor). The disks must be the ones the VM was saved with,
    /// unchanged: see [`super::snapshot`].
    pub incoming: Option<PathBuf>,
    /// UEFI with Secure Boot enforced ([`OVMF_CODE_SECBOOT`], a per-VM copy of
    /// [`OVMF_VARS_MS`], `q35,smm=on`, secure pflash). Implies `uefi`.
    pub secure_boot: bool,
    /// A TPM 2.0 (swtpm; [`super::tpm`]): a fresh one or a kept state directory.
    pub tpm: Option<TpmState>,
    /// Host `127.0.0.1:HOST` → guest `:GUEST` TCP forwards (`kiln run --ssh`). Implies
    /// `network` (still `restrict=on`: the guest reaches nothing itself).
    pub hostfwd: Vec<(u16, u16)>,
    /// Extra disks on a virtio-scsi controller, one SCSI target each in order: the guest
    /// names them /dev/sda, /dev/sdb, … (a bare-metal config's device names; Debian's
    /// cloud kernel has virtio_scsi and sd_mod but no AHCI driver).
    pub scsi_disks: Vec<Disk>,
    /// The user network's subnet (QEMU's `net=`, e.g. `10.0.0.0/8`) when a guestfwd
    /// address must lie outside the default 10.0.2.0/24.
    pub net: Option<String>,
}

impl VmOptions {
    pub fn new(image: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        VmOptions {
            image: image.into(),
            name: name.into(),
            uefi: false,
            memory_mb: 2048,
            cpus: default_cpus(),
            snapshot: true,
            disks: Vec::new(),
            fw_cfg: Vec::new(),
            network: false,
            guestfwd: Vec::new(),
            artifacts: PathBuf::from("build/test-artifacts"),
            cdrom: None,
            tftp: None,
            monitor: false,
            incoming: None,
            secure_boot: false,
            tpm: None,
            hostfwd: Vec::new(),
            scsi_disks: Vec::new(),
            net: None,
        }
    }
}

/// The disk format QEMU should assume (never let it guess: a raw image guessed as
/// something else is a security issue, and QEMU warns).
pub fn image_format(path: &Path) -> Result<&'static str> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(if n == 4 && &magic == b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

/// The `cache=` mode of a writable disk. `unsafe` ignores the guest's flushes: only where
/// every write is thrown away anyway (`snapshot=on`: a temp overlay dropped when QEMU
/// exits). A disk that keeps its writes gets `writeback`, which honours flushes, so a host
/// crash cannot corrupt what the guest had synced.
fn cache_mode(snapshot: bool) -> &'static str {
    if snapshot {
        "unsafe"
    } else {
        "writeback"
    }
}

/// QEMU's command line for `opts`, console excluded. `work` holds the OVMF vars copy
/// and the swtpm socket ([`super::tpm::Swtpm::start`] must have started it there).
pub fn qemu_args(opts: &VmOptions, work: &Path) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    match accel() {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // Not `max`: it offers ERMS, so the guest kernel zeroes pages with `rep stosb`,
        // which TCG runs a byte at a time (seen here: a 21 s RCU stall in `modprobe loop`,
        // a first boot to the marker in 94 s). qemu64 gets the unrolled loop: 40 s.
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "qemu64"]),
    }
    let mem = opts.memory_mb.to_string();
    let cpus = opts.cpus.to_string();
    // Secure Boot: OVMF's secure variable store lives in SMM.
    let machine = if opts.secure_boot {
        "q35,smm=on"
    } else {
        "q35"
    };
    push(&[
        "-machine",
        machine,
        "-m",
        &mem,
        "-smp",
        &cpus,
        "-nodefaults",
    ]);
    push(&["-display", "none", "-vga", "none"]);
    push(&["-device", "virtio-rng-pci"]);
    if opts.uefi || opts.secure_boot {
        let fw = uefi_args(opts.secure_boot, work)?;
        push(&fw.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let snap = if opts.snapshot { ",snapshot=on" } else { "" };
    // Boot order: network, CD, then the disk.
    let mut next_boot = 0;
    let mut bootindex = || {
        next_boot += 1;
        next_boot - 1
    };
    let net_boot = opts.tftp.as_ref().map(|_| bootindex());
    if let Some(iso) = &opts.cdrom {
        if !iso.is_file() {
            bail!("ISO {} not found", iso.display());
        }
        push(&[
            "-drive",
            &format!(
                "file={},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
                opt_path(iso)?
            ),
            "-device",
            &format!("ide-cd,drive=cd0,bus=ide.0,bootindex={}", bootindex()),
        ]);
    }
    if !opts.image.as_os_str().is_empty() {
        if !opts.image.is_file() {
            bail!("image {} not found", opts.image.display());
        }
        let fmt = image_format(&opts.image)?;
        push(&[
            "-drive",
            &format!(
                "file={},format={fmt},if=none,id=d0,cache={}{snap}",
                opt_path(&opts.image)?,
                cache_mode(opts.snapshot)
            ),
            "-device",
            &format!("virtio-blk-pci,drive=d0,bootindex={}", bootindex()),
        ]);
    }
    for (i, d) in opts.disks.iter().enumerate() {
        let (drive, serial) = extra_drive(d, &format!("x{i}"), snap)?;
        push(&[
            "-drive",
            &drive,
            "-device",
            &format!("virtio-blk-pci,drive=x{i}{serial}"),
        ]);
    }
    for x in scsi_args(opts, snap)? {
        push(&[&x]);
    }
    for (name, file) in &opts.fw_cfg {
        if !file.is_file() {
            bail!("fw_cfg file {} not found", file.display());
        }
        push(&[
            "-fw_cfg",
            &format!("name={},file={}", opt_value(name), opt_path(file)?),
        ]);
    }
    if opts.tpm.is_some() {
        let t = super::tpm::qemu_args(work)?;
        push(&t.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if opts.network || !opts.guestfwd.is_empty() || opts.tftp.is_some() || !opts.hostfwd.is_empty()
    {
        let n = net_args(opts, net_boot)?;
        push(&n.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if let Some(state) = &opts.incoming {
        if !state.is_file() {
            bail!("saved VM state {} not found", state.display());
        }
        push(&["-incoming", &super::optstr::incoming_uri(state)?]);
    }
    Ok(a)
}

/// The user network (`restrict=on`: the guest reaches only what is forwarded) and its NIC,
/// booted first when `net_boot` gives its boot index.
fn net_args(opts: &VmOptions, net_boot: Option<i32>) -> Result<Vec<String>> {
    let mut nd = "user,id=n0,restrict=on".to_string();
    if let Some(net) = &opts.net {
        nd.push_str(&format!(",net={}", opt_value(net)));
    }
    for (host, guest) in &opts.hostfwd {
        nd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    if !opts.guestfwd.is_empty() && !crate::cmd::have("socat") {
        bail!(
            "forwarding guest connections to the host needs socat (package socat; run `make deps`)"
        );
    }
    for (guest, port) in &opts.guestfwd {
        // `cmd:` starts one relay per guest connection. A `tcp:` chardev target would
        // be one host connection opened when QEMU starts: the server closes it as idle
        // long before a TCG guest has booted, and every guest connection then hangs.
        nd.push_str(&format!(
            ",guestfwd=tcp:{}-cmd:socat STDIO TCP:127.0.0.1:{port}",
            opt_value(guest)
        ));
    }
    if let Some((dir, file)) = &opts.tftp {
        if !dir.join(file).is_file() {
            bail!("TFTP boot file {} not found", dir.join(file).display());
        }
        nd.push_str(&format!(
            ",tftp={},bootfile={}",
            opt_path(dir)?,
            opt_value(file)
        ));
    }
    // Without network boot the NIC gets no option ROM: the firmware would otherwise
    // load and start iPXE for nothing, seconds under TCG.
    let dev = match net_boot {
        Some(i) => format!("virtio-net-pci,netdev=n0,bootindex={i}"),
        None => "virtio-net-pci,netdev=n0,romfile=".to_string(),
    };
    Ok(vec!["-netdev".into(), nd, "-device".into(), dev])
}

/// The UEFI firmware's pflash drives (and, for Secure Boot, the secure pflash); the
/// variables are copied into `work` for this VM.
fn uefi_args(secure_boot: bool, work: &Path) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let (code, vars_src) = if secure_boot {
        (OVMF_CODE_SECBOOT, OVMF_VARS_MS)
    } else {
        (OVMF_CODE, OVMF_VARS)
    };
    for f in [code, vars_src] {
        if !Path::new(f).is_file() {
            bail!("UEFI firmware {f} not found: install the ovmf package (make deps)");
        }
    }
    // Each VM writes its own copy of the variables (boot entries, MOK requests).
    let vars = work.join("OVMF_VARS.fd");
    std::fs::copy(vars_src, &vars)
        .with_context(|| format!("copying {vars_src} to {}", vars.display()))?;
    if secure_boot {
        push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    push(&[
        "-drive",
        &format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            opt_path(Path::new(code))?
        ),
        "-drive",
        &format!("if=pflash,format=raw,unit=1,file={}", opt_path(&vars)?),
    ]);
    Ok(a)
}

/// A virtio-scsi controller and one `scsi-hd` per [`VmOptions::scsi_disks`] entry.
fn scsi_args(opts: &VmOptions, snap: &str) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    if !opts.scsi_disks.is_empty() {
        push(&["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    for (i, d) in opts.scsi_disks.iter().enumerate() {
        let (drive, serial) = extra_drive(d, &format!("scsi{i}"), snap)?;
        push(&[
            "-drive",
            &drive,
            "-device",
            &format!("scsi-hd,drive=scsi{i},bus=scsi0.0,channel=0,scsi-id={i},lun=0{serial}"),
        ]);
    }
    Ok(a)
}

/// An extra disk's `-drive` value (id `id`) and the `,serial=…` its device gets.
fn extra_drive(d: &Disk, id: &str, snap: &str) -> Result<(String, String)> {
    let fmt = image_format(&d.path)?;
    let ro = if d.read_only { ",read-only=on" } else { "" };
    let serial = d
        .serial
        .as_ref()
        .map(|s| format!(",serial={}", opt_value(s)))
        .unwrap_or_default();
    let drive = format!(
        "file={},format={fmt},if=none,id={id}{ro}{snap}",
        opt_path(&d.path)?
    );
    Ok((drive, serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Cmd;

    #[test]
    fn formats_are_sniffed() {
        let td = tempfile::tempdir().unwrap();
        let raw = td.path().join("a");
        std::fs::write(&raw, vec![0u8; 1024]).unwrap();
        assert_eq!(image_format(&raw).unwrap(), "raw");
        let q = td.path().join("b.qcow2");
        Cmd::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&q)
            .arg("1M")
            .run()
            .unwrap();
        assert_eq!(image_format(&q).unwrap(), "qcow2");
    }

    #[test]
    fn commas_in_paths_and_values_are_escaped() {
        let td = tempfile::tempdir().unwrap();
        let dir = td.path().join("x,y");
        std::fs::create_dir(&dir).unwrap();
        let img = dir.join("a,format=qcow2,b.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let ign = dir.join("c,d.ign");
        std::fs::write(&ign, "{}").unwrap();
        let mut o = VmOptions::new(&img, "t");
        o.disks.push(Disk {
            path: img.clone(),
            read_only: true,
            serial: Some("s,snapshot=off".into()),
        });
        o.fw_cfg.push(("opt/a,b".into(), ign.clone()));
        let a = qemu_args(&o, td.path()).unwrap();
        let d = td.path().display();
        let has = |want: &str| assert!(a.iter().any(|x| x == want), "no {want:?} in {a:?}");
        has(&format!(
            "file={d}/x,,y/a,,format=qcow2,,b.raw,format=raw,if=none,id=d0,cache=unsafe,snapshot=on"
        ));
        has(&format!(
            "file={d}/x,,y/a,,format=qcow2,,b.raw,format=raw,if=none,id=x0,read-only=on,snapshot=on"
        ));
        has("virtio-blk-pci,drive=x0,serial=s,,snapshot=off");
        has(&format!("name=opt/a,,b,file={d}/x,,y/c,,d.ign"));
    }

    #[test]
    fn only_throwaway_disks_ignore_flushes() {
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("d.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mut o = VmOptions::new(&img, "t");
        o.snapshot = false;
        let a = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(a.contains(",cache=writeback "), "{a}");
        assert!(!a.contains("unsafe") && !a.contains("snapshot"), "{a}");
        o.snapshot = true;
        let a = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(a.contains(",cache=unsafe,snapshot=on "), "{a}");
    }

    #[test]
    fn secure_boot_uses_the_secure_firmware_and_smm() {
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("d.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mut o = VmOptions::new(&img, "t");
        let plain = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(
            !plain.contains("pflash") && !plain.contains("smm"),
            "{plain}"
        );
        o.secure_boot = true;
        if !Path::new(OVMF_CODE_SECBOOT).is_file() {
            assert!(qemu_args(&o, td.path()).is_err());
            return;
        }
        let a = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(a.contains("-machine q35,smm=on "), "{a}");
        assert!(
            a.contains("driver=cfi.pflash01,property=secure,value=on"),
            "{a}"
        );
        assert!(
            a.contains(&format!("readonly=on,file={OVMF_CODE_SECBOOT}")),
            "{a}"
        );
        let vars = td.path().join("OVMF_VARS.fd");
        assert!(
            a.contains(&format!("unit=1,file={}", vars.display())),
            "{a}"
        );
        assert_eq!(
            std::fs::read(&vars).unwrap(),
            std::fs::read(OVMF_VARS_MS).unwrap()
        );
    }

    #[test]
    fn args_restrict_network() {
        let td = tempfile::tempdir().unwrap();
        let img = td.path().join("d.raw");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mut o = VmOptions::new(&img, "t");
        o.guestfwd.push(("10.0.2.100:8080".into(), 4321));
        let a = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(
            a.contains(
                "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:socat STDIO TCP:127.0.0.1:4321"
            ),
            "{a}"
        );
        assert!(a.contains("snapshot=on"), "{a}");
        // Host forwards listen on the loopback address only.
        o.hostfwd.push((2222, 22));
        let a = qemu_args(&o, td.path()).unwrap().join(" ");
        assert!(
            a.contains("restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,guestfwd="),
            "{a}"
        );
        // No network boot: no option ROM on the NIC.
        assert!(
            a.split(' ')
                .any(|x| x == "virtio-net-pci,netdev=n0,romfile="),
            "{a}"
        );
    }
}
