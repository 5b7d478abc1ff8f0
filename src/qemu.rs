//! QEMU: boot an image (TCG when KVM is unusable), serial console capture, wait for
//! markers. Used by `kiln run` and by the e2e tests (a small kola-like harness).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::qemu::{Vm, VmOptions};
//! use std::time::Duration;
//! let mut vm = Vm::start(VmOptions::new("build/base.qcow2", "bios-smoke"))?;
//! vm.wait_for("KILN-BOOTED", Duration::from_secs(300))?;
//! vm.login(Duration::from_secs(120))?;
//! let out = vm.run_ok("systemctl is-system-running --wait", Duration::from_secs(120))?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! The console is a unix socket QEMU serves; a reader thread appends everything to an
//! in-memory buffer and to a log file. On failure (a panicking test or [`Vm::keep_log`])
//! the whole log is copied to the artifacts directory as `NAME.log`. QEMU is killed when
//! the [`Vm`] is dropped.

use crate::cmd::Cmd;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The disk image (raw or qcow2).
    pub image: PathBuf,
    /// Boot with UEFI firmware (OVMF) instead of BIOS (SeaBIOS).
    #[arg(long)]
    pub uefi: bool,
    /// Ignition config handed to the VM by fw_cfg (`opt/com.coreos/config`).
    #[arg(long)]
    pub ignition: Option<PathBuf>,
    /// Throw away every write when QEMU exits.
    #[arg(long)]
    pub snapshot: bool,
    /// Memory in MiB.
    #[arg(long, default_value = "2048")]
    pub memory: String,
    /// Virtual CPUs [default: 2 with KVM, 1 under TCG (see `default_cpus`)].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub cpus: Option<u32>,
    /// Extra disk image attached as a virtio disk (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<PathBuf>,
}

/// Where the OVMF firmware lives (Debian's `ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The vCPUs a guest gets unless told otherwise: 2 with KVM, 1 under TCG. Each TCG vCPU
/// is a host thread that spins while the guest waits on another vCPU (IPIs, spinlocks, RCU);
/// when the host cannot give every vCPU its own core (two test VMs and a compose on two
/// cores), a 2-vCPU guest stalls itself: seen here as RCU stalls and 43 s soft lockups in
/// udev, boots of 110–180 s, and once a first boot that never finished in 900 s. One vCPU
/// cannot wait on a descheduled sibling: the same load gave 107–131 s and no stall. On an
/// idle host 2 vCPUs boot faster (40 s vs 53 s), so the benchmarks ask for 2 and
/// `kiln run --cpus` chooses.
pub fn default_cpus() -> u32 {
    match accel() {
        Accel::Kvm => 2,
        Accel::Tcg => 1,
    }
}

/// The accelerator QEMU is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Decides whether KVM works: `/dev/kvm` must open, and a probe VM must get as far as
/// SeaBIOS printing its banner (KVM can exist and still fail at the first MSR write, or
/// hang). `KILN_ACCEL=tcg|kvm` overrides the probe. The answer is cached per process.
pub fn accel() -> Accel {
    static A: OnceLock<Accel> = OnceLock::new();
    *A.get_or_init(|| match std::env::var("KILN_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => {
            if probe_kvm() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
    })
}

fn probe_kvm() -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok(td) = tempfile::tempdir() else {
        return false;
    };
    let dbg = td.path().join("debugcon.log");
    let Ok(dbg_opt) = opt_path(&dbg) else {
        return false;
    };
    let h = Cmd::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-no-reboot", "-chardev"])
        .arg(format!("file,path={dbg_opt},id=d"))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=d"])
        .spawn_logged(&td.path().join("qemu.log"));
    let Ok(h) = h else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut ok = false;
    while Instant::now() < deadline {
        if std::fs::read(&dbg)
            .map(|b| String::from_utf8_lossy(&b).contains("SeaBIOS"))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        if let Ok(Some(_)) = h.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = h.kill();
    ok
}

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

/// A value for a QEMU option string (`-drive`, `-chardev`, `-netdev`, `-device`,
/// `-fw_cfg`, ...): QEMU splits those at every `,`, and reads `,,` as one literal comma.
/// Every path or user value put into an option string goes through here, so a comma in
/// it can neither break the option nor add one (`a,snapshot=off`).
pub fn opt_value(v: &str) -> String {
    v.replace(',', ",,")
}

/// A path for a QEMU option string: absolute (a relative `nbd:x` or `json:{…}` would be
/// read as a protocol prefix by `-drive file=`), UTF-8 (QEMU's option strings are text;
/// a lossy conversion would name another file), and escaped with [`opt_value`].
pub fn opt_path(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("making {} absolute", p.display()))?;
    let s = abs
        .to_str()
        .ok_or_else(|| anyhow!("{}: QEMU needs paths that are valid UTF-8", abs.display()))?;
    Ok(opt_value(s))
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

/// QEMU's command line for `opts`, console excluded. `work` holds the OVMF vars copy.
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
    push(&["-machine", "q35", "-m", &mem, "-smp", &cpus, "-nodefaults"]);
    push(&["-display", "none", "-vga", "none"]);
    push(&["-device", "virtio-rng-pci"]);
    if opts.uefi {
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).is_file() {
                bail!("UEFI firmware {f} not found: install the ovmf package (make deps)");
            }
        }
        let vars = work.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copying {OVMF_VARS} to {}", vars.display()))?;
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt_path(Path::new(OVMF_CODE))?
            ),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", opt_path(&vars)?),
        ]);
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
        let fmt = image_format(&d.path)?;
        let ro = if d.read_only { ",read-only=on" } else { "" };
        let serial = d
            .serial
            .as_ref()
            .map(|s| format!(",serial={}", opt_value(s)))
            .unwrap_or_default();
        push(&[
            "-drive",
            &format!(
                "file={},format={fmt},if=none,id=x{i}{ro}{snap}",
                opt_path(&d.path)?
            ),
            "-device",
            &format!("virtio-blk-pci,drive=x{i}{serial}"),
        ]);
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
    if opts.network || !opts.guestfwd.is_empty() || opts.tftp.is_some() {
        let mut nd = "user,id=n0,restrict=on".to_string();
        if !opts.guestfwd.is_empty() && !crate::cmd::have("socat") {
            bail!("forwarding guest connections to the host needs socat (package socat; run `make deps`)");
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
        push(&["-netdev", &nd, "-device", &dev]);
    }
    Ok(a)
}

struct Shared {
    buf: Mutex<(Vec<u8>, bool)>,
    cond: Condvar,
}

/// A running VM with its serial console.
pub struct Vm {
    opts: VmOptions,
    handle: Option<duct::Handle>,
    shared: Arc<Shared>,
    writer: UnixStream,
    /// Byte offset in the console buffer up to which output has been consumed.
    cursor: usize,
    log: PathBuf,
    keep: bool,
    seq: u64,
    started: Instant,
    /// The QMP socket, when [`VmOptions::monitor`] asked for one.
    qmp: Option<PathBuf>,
    _work: tempfile::TempDir,
}

impl Vm {
    /// Starts QEMU and connects to its serial console.
    pub fn start(opts: VmOptions) -> Result<Vm> {
        let work = tempfile::Builder::new()
            .prefix("kiln-vm-")
            .tempdir()
            .context("creating the VM's temp directory")?;
        let sock = work.path().join("console.sock");
        let log = work.path().join("console.log");
        let mut args = qemu_args(&opts, work.path())?;
        args.extend([
            "-chardev".to_string(),
            format!("socket,id=s0,path={},server=on,wait=off", opt_path(&sock)?),
            "-serial".into(),
            "chardev:s0".into(),
        ]);
        let qmp = opts.monitor.then(|| work.path().join("qmp.sock"));
        if let Some(q) = &qmp {
            args.extend([
                "-chardev".to_string(),
                format!("socket,id=m0,path={},server=on,wait=off", opt_path(q)?),
                "-mon".into(),
                "chardev=m0,mode=control".into(),
            ]);
        }
        let handle = Cmd::new("qemu-system-x86_64")
            .args(&args)
            .spawn_logged(&work.path().join("qemu.log"))?;
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(_)) = handle.try_wait() {
                        let q = std::fs::read_to_string(work.path().join("qemu.log"))
                            .unwrap_or_default();
                        bail!("QEMU exited at once:\n{q}");
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        let _ = handle.kill();
                        return Err(e).context("connecting to QEMU's serial console socket");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let writer = stream.try_clone().context("cloning the console socket")?;
        let shared = Arc::new(Shared {
            buf: Mutex::new((Vec::new(), false)),
            cond: Condvar::new(),
        });
        let mut file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let sh = shared.clone();
        let mut reader = stream;
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                let mut g = sh.buf.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    g.1 = true;
                    sh.cond.notify_all();
                    return;
                }
                g.0.extend_from_slice(&chunk[..n]);
                let _ = file.write_all(&chunk[..n]);
                sh.cond.notify_all();
            }
        });
        Ok(Vm {
            opts,
            handle: Some(handle),
            shared,
            writer,
            cursor: 0,
            log,
            keep: false,
            seq: 0,
            started,
            qmp,
            _work: work,
        })
    }

    /// Runs one QMP command (`execute`, with `arguments` unless null) on the monitor
    /// socket and returns its `return` value. Each call is its own QMP session (greeting,
    /// `qmp_capabilities`, the command); events in between are skipped.
    pub fn qmp(
        &mut self,
        execute: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let path = self
            .qmp
            .clone()
            .ok_or_else(|| anyhow!("this VM has no monitor (VmOptions::monitor)"))?;
        let stream = UnixStream::connect(&path)
            .with_context(|| format!("connecting to QEMU's monitor {}", path.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .context("setting a timeout on the monitor socket")?;
        let mut w = stream.try_clone().context("cloning the monitor socket")?;
        let mut r = std::io::BufReader::new(stream);
        let mut read_msg = |want_return: bool| -> Result<serde_json::Value> {
            loop {
                let mut line = String::new();
                let n = std::io::BufRead::read_line(&mut r, &mut line)
                    .context("reading from QEMU's monitor")?;
                if n == 0 {
                    bail!("QEMU closed the monitor connection");
                }
                let v: serde_json::Value = serde_json::from_str(line.trim())
                    .with_context(|| format!("QEMU's monitor said {line:?}"))?;
                if !want_return && v.get("QMP").is_some() {
                    return Ok(v);
                }
                if let Some(e) = v.get("error") {
                    bail!("QMP {execute}: {e}");
                }
                if want_return {
                    if let Some(ret) = v.get("return") {
                        return Ok(ret.clone());
                    }
                }
                // An event ({"event": …}): not the answer.
            }
        };
        read_msg(false)?;
        let mut send = |v: serde_json::Value| -> Result<()> {
            w.write_all(format!("{v}\n").as_bytes())
                .context("writing to QEMU's monitor")
        };
        send(serde_json::json!({"execute": "qmp_capabilities"}))?;
        read_msg(true)?;
        let mut cmd = serde_json::json!({ "execute": execute });
        if !arguments.is_null() {
            cmd["arguments"] = arguments;
        }
        send(cmd)?;
        read_msg(true)
    }

    /// A human-monitor (HMP) command through QMP, e.g. `info block`; returns its output.
    pub fn monitor(&mut self, command: &str) -> Result<String> {
        let v = self.qmp(
            "human-monitor-command",
            serde_json::json!({ "command-line": command }),
        )?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Hard-resets the guest (`system_reset`): the reset button, not a reboot. Nothing
    /// is synced: whatever the guest kernel had not yet written to the virtual disk is
    /// lost, as in a power cut. (What the guest had written stays: QEMU's own cache is
    /// the host's, and QEMU keeps running.)
    pub fn reset(&mut self) -> Result<()> {
        self.qmp("system_reset", serde_json::Value::Null)?;
        Ok(())
    }

    /// Seconds since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the console printed so far (lossy UTF-8).
    pub fn console(&self) -> String {
        let g = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&g.0).into_owned()
    }

    /// Keeps the console log as an artifact even if nothing panics.
    pub fn keep_log(&mut self) {
        self.keep = true;
    }

    /// Waits until the console prints something for which `find` returns `Some(end)`
    /// (byte offset in the text after the cursor, just past the match), then moves the
    /// cursor there and returns the text consumed.
    fn wait_until<F>(&mut self, what: &str, timeout: Duration, mut find: F) -> Result<String>
    where
        F: FnMut(&str) -> Option<usize>,
    {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // One char per byte (non-ASCII as '?'), so offsets in the text are byte
            // offsets in the buffer.
            let text: String = g.0[self.cursor..]
                .iter()
                .map(|&b| if b < 0x80 { b as char } else { '?' })
                .collect();
            if let Some(end) = find(&text) {
                self.cursor += end;
                return Ok(text[..end].to_string());
            }
            if g.1 {
                drop(g);
                self.keep = true;
                let status = self.exit_status();
                bail!(
                    "QEMU exited ({status}) before {what} appeared on the console (log: {}); \
                     the console ended with:\n{}",
                    self.artifact_path().display(),
                    console_tail(&self.console(), 40)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(g);
                self.keep = true;
                bail!(
                    "timed out after {:?} waiting for {what} on the console (log: {}); \
                     the console ended with:\n{}",
                    timeout,
                    self.artifact_path().display(),
                    console_tail(&self.console(), 40)
                );
            }
            g = self
                .shared
                .cond
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn exit_status(&mut self) -> String {
        match self.handle.as_ref().map(|h| h.try_wait()) {
            Some(Ok(Some(o))) => format!("{}", o.status),
            _ => "still running".into(),
        }
    }

    /// Waits for `marker` and returns the whole console line that holds it.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let m = marker.to_string();
        let text = self.wait_until(&format!("{marker:?}"), timeout, |t| {
            let i = t.find(&m)?;
            let eol = t[i..].find('\n')?;
            Some(i + eol + 1)
        })?;
        let i = text.rfind(marker).unwrap_or(0);
        let start = text[..i].rfind('\n').map(|x| x + 1).unwrap_or(0);
        Ok(strip_ansi(text[start..].trim_end()))
    }

    /// Waits until every marker in `markers` has appeared, in any order (units ordered
    /// only after the same target print in any order), and returns their lines in the
    /// order of `markers`.
    pub fn wait_for_all(&mut self, markers: &[&str], timeout: Duration) -> Result<Vec<String>> {
        let ms: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
        let what = format!("all of {markers:?}");
        let text = self.wait_until(&what, timeout, |t| end_of_all(t, &ms))?;
        Ok(ms
            .iter()
            .map(|m| {
                let i = text.find(m.as_str()).unwrap_or(0);
                let start = text[..i].rfind('\n').map(|x| x + 1).unwrap_or(0);
                let end = text[i..].find('\n').map(|e| i + e).unwrap_or(text.len());
                strip_ansi(text[start..end].trim_end())
            })
            .collect())
    }

    /// Sends raw text to the console.
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.writer
            .write_all(text.as_bytes())
            .and_then(|_| self.writer.flush())
            .context("writing to the VM's serial console")
    }

    /// Waits for the root shell that `kiln.autologin` gives on the serial console and makes
    /// it quiet for scripted use (no echo, no prompt, no kernel messages, no pager, no colours). The shell may
    /// already be up (the login can come before or after any boot marker), so this keeps
    /// sending a probe until the shell answers.
    pub fn login(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let keep = self.keep;
        loop {
            self.send("\nstty -echo; PS1=''; PS2=''; unset PROMPT_COMMAND; dmesg -n 1; export PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb\n")?;
            match self.run("true", Duration::from_secs(20)) {
                Ok((0, _)) => {
                    self.keep = keep;
                    return Ok(());
                }
                Ok(_) | Err(_) if Instant::now() < deadline => continue,
                Ok((st, out)) => bail!("the console shell answered {st}: {out}"),
                Err(e) => {
                    return Err(e).context("no root shell on the serial console (is kiln.autologin on the kernel command line?)")
                }
            }
        }
    }

    /// Runs `cmd` in the console shell; returns its exit status and output.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        self.seq += 1;
        let tag = format!("@@KILN-{}-", self.seq);
        self.send(&format!("{cmd}\necho \"{tag}$?@@\"\n"))?;
        let t = tag.clone();
        let text = self.wait_until(&format!("the end of `{cmd}`"), timeout, |s| {
            let mut from = 0;
            while let Some(i) = s[from..].find(&t) {
                let at = from + i + t.len();
                let rest = &s[at..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if !digits.is_empty() && rest[digits.len()..].starts_with("@@") {
                    return Some(at + digits.len() + 2);
                }
                from = at;
            }
            None
        })?;
        let i = text.rfind(&tag).unwrap_or(0);
        let status: i32 = text[i + tag.len()..]
            .trim_end_matches('@')
            .parse()
            .map_err(|_| anyhow!("unreadable exit status after `{cmd}`"))?;
        let out = strip_kernel_messages(&strip_ansi(&text[..i]).replace('\r', ""));
        Ok((status, out.trim().to_string()))
    }

    /// Like [`Vm::run`], but a non-zero status is an error carrying the output.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> Result<String> {
        let (status, out) = self.run(cmd, timeout)?;
        if status != 0 {
            self.keep = true;
            bail!("`{cmd}` exited with {status} in the VM:\n{out}");
        }
        Ok(out)
    }

    /// Waits for QEMU to exit (after a poweroff in the guest).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(h) = &self.handle {
                if let Ok(Some(_)) = h.try_wait() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.keep = true;
        bail!("QEMU did not exit within {timeout:?}")
    }

    fn artifact_path(&self) -> PathBuf {
        self.opts.artifacts.join(format!("{}.log", self.opts.name))
    }

    /// Stops QEMU now.
    pub fn kill(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.kill();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if self.keep || std::thread::panicking() {
            let dst = self.artifact_path();
            let _ = std::fs::create_dir_all(&self.opts.artifacts);
            if std::fs::copy(&self.log, &dst).is_ok() {
                eprintln!(
                    "kiln: console log of {} kept in {}",
                    self.opts.name,
                    dst.display()
                );
            }
        }
    }
}

/// Removes ANSI escape sequences (colours, cursor moves) from console text.
/// Removes kernel-log lines (`[  191.472505] unit[661]: …`) that services write to the
/// console while a command runs: they interleave with the command's output, also in the
/// middle of a line.
pub fn strip_kernel_messages(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        let close = after.find(']');
        let stamp = close.map(|c| after[..c].trim());
        let is_stamp = stamp.is_some_and(|t| {
            let mut parts = t.splitn(2, '.');
            let (a, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if !is_stamp {
            out.push_str(&rest[..start + 1]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..start]);
        // Drop the message up to and including its newline.
        let msg = &rest[start..];
        rest = match msg.find('\n') {
            Some(n) => &msg[n + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// The offset just past the end of the line of the last marker to appear, once every one
/// of `markers` has appeared on a complete line of `text`.
fn end_of_all(text: &str, markers: &[String]) -> Option<usize> {
    let mut end = 0;
    for m in markers {
        let i = text.find(m.as_str())?;
        let eol = text[i..].find('\n')?;
        end = end.max(i + eol + 1);
    }
    Some(end)
}

/// The last `lines` lines of a console log, without escape sequences, indented: what a
/// failed wait shows so a CI log explains itself without the artifact.
pub fn console_tail(console: &str, lines: usize) -> String {
    let text = strip_ansi(console);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                it.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `kiln run`.
pub fn cmd_run(a: RunArgs) -> Result<()> {
    let memory_mb: u32 = a.memory.trim_end_matches(['M', 'm']).parse().map_err(|_| {
        crate::error::InputError::new(
            "command line",
            format!("--memory {:?}: expected MiB, e.g. 2048", a.memory),
        )
        .key("--memory")
    })?;
    let mut opts = VmOptions::new(&a.image, "run");
    opts.uefi = a.uefi;
    opts.snapshot = a.snapshot;
    opts.memory_mb = memory_mb;
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
    let work = tempfile::tempdir().context("creating a temp directory")?;
    let mut args = qemu_args(&opts, work.path())?;
    args.extend(["-serial".to_string(), "mon:stdio".to_string()]);
    if accel() == Accel::Tcg {
        eprintln!("kiln: KVM is not usable here; using TCG (slow). Ctrl-a x quits.");
    } else {
        eprintln!("kiln: using KVM. Ctrl-a x quits.");
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

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] x"), "  OK  ] x");
        assert_eq!(strip_ansi("a\u{1b}cb"), "ab");
    }

    #[test]
    fn all_markers_in_any_order() {
        let ms = vec!["B".to_string(), "A".to_string()];
        assert_eq!(end_of_all("x A\ny B\nz", &ms), Some(8));
        assert_eq!(end_of_all("x B\ny A\nz", &ms), Some(8));
        // A marker on an unfinished line does not count yet.
        assert_eq!(end_of_all("x A\ny B", &ms), None);
        assert_eq!(end_of_all("x A\n", &ms), None);
    }

    #[test]
    fn console_tail_keeps_the_last_lines_without_escapes() {
        let log = "one\ntwo\n\u{1b}[0;31mthree\u{1b}[0m\nfour\n";
        assert_eq!(console_tail(log, 2), "  | three\n  | four");
        assert_eq!(console_tail("x", 5), "  | x");
        assert_eq!(console_tail("", 5), "");
    }

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
    fn kernel_messages_are_removed_from_command_output() {
        let a = "[  198.839893] boot-marker[658]: KILN-BOOTED commit=77\nhello from ignition";
        assert_eq!(strip_kernel_messages(a), "hello from ignition");
        let b = "hello from ignition[  188.301175] boot-marker[660]: KILN-BOOTED x\n";
        assert_eq!(strip_kernel_messages(b), "hello from ignition");
        let c = "a [b] [1.x] [ 2.5]\nkept";
        assert_eq!(strip_kernel_messages(c), "a [b] [1.x] kept");
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
    fn relative_paths_cannot_name_a_protocol() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            opt_path(Path::new("json:{a,b}")).unwrap(),
            format!("{}/json:{{a,,b}}", cwd.display())
        );
        assert_eq!(opt_value("a,,b"), "a,,,,b");
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
        // No network boot: no option ROM on the NIC.
        assert!(
            a.split(' ')
                .any(|x| x == "virtio-net-pci,netdev=n0,romfile="),
            "{a}"
        );
    }
}
