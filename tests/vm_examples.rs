// suite-minutes: 14 (TCG run time here, devbox compose included; tests/suite.sh balances the VM test files over two groups by it)
//! Every example boots: `recipes/examples/devbox.toml` is composed (from the shared .deb
//! cache) and built into an image, and the configs of `examples/ignition/` are built with
//! `kiln ignition build` and booted on it (recipes/base.toml itself boots in every other VM
//! test). Two boots:
//!
//! - `kiln run --ssh` (the binary, as a user runs it) with examples/ignition/vm.toml plus a
//!   user holding a key made by `ssh-keygen` for this test: the printed `ssh` command, with
//!   that key, runs commands in the VM; they see the example's motd, hostname, user and unit
//!   and the devbox recipe's tools and kernel argument.
//! - bare-metal.toml and k8s-worker.toml (with its fragments) in one config: the former
//!   gets the SCSI disks it names (/dev/sdb, /dev/sdc), the latter its control plane at
//!   https://10.0.0.10:8443 (a local `openssl s_server` behind a guestfwd, with a CA made
//!   for the test standing in for the cluster's, the example's `files/cluster-ca.pem`).
//!
//! Console logs land in `build/test-artifacts/`.

mod common;

use common::VM_CMD as CMD;
use kiln::image::{self, Format, ImageOptions};
use kiln::qemu::{Disk, Vm, VmOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn work_dir() -> &'static Path {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let d = common::fixture_dir().join("examples");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// The devbox recipe's qcow2 image (autologin on the serial console), built once per
/// commit and shared by the tests of this file.
fn devbox_image() -> PathBuf {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let f = {
            let _l = common::lock(&common::fixture_dir().join("lock"));
            let recipe = common::project_root().join("recipes/examples/devbox.toml");
            let repo = common::fixture_dir().join("repo");
            let cache = common::project_root().join("build/cache");
            let t = Instant::now();
            let v = common::compose(&recipe, &repo, &cache, &[]);
            eprintln!("devbox compose: {:.1} s", t.elapsed().as_secs_f64());
            (
                repo,
                v["ref"].as_str().unwrap().to_string(),
                v["commit"].as_str().unwrap().to_string(),
            )
        };
        let (repo, ref_, commit) = f;
        let _l = common::lock(&work_dir().join("image.lock"));
        let img = work_dir().join("devbox.qcow2");
        let stamp = work_dir().join("devbox.qcow2.commit");
        if img.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&commit) {
            return img;
        }
        let _ = std::fs::remove_file(&stamp);
        let mut o = ImageOptions::new(&repo, &ref_, &img);
        o.format = Format::Qcow2;
        o.extra_kargs = vec!["kiln.autologin".into()];
        let mut p = kiln::progress::Progress::new(false);
        image::build(&o, &mut p).expect("kiln image of the devbox commit");
        std::fs::write(&stamp, &commit).unwrap();
        img
    })
    .clone()
}

/// `kiln ignition build CONFIG [-d FRAGMENTS]` → the parsed JSON.
fn build_example(config: &Path, fragments: Option<&Path>, out: &str) -> serde_json::Value {
    let out = work_dir().join(out);
    let mut args = vec![
        "ignition".to_string(),
        "build".into(),
        config.display().to_string(),
    ];
    if let Some(d) = fragments {
        args.extend(["-d".into(), d.display().to_string()]);
    }
    args.extend(["-o".into(), out.display().to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    common::kiln_ok(&a);
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// Merges `b` into `a`: objects key by key, lists appended (the configs merged here
/// share no file path, user or unit, so nothing needs Ignition's own merge rules).
fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, v) in y {
                match x.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        x.insert(k, v);
                    }
                }
            }
        }
        (serde_json::Value::Array(x), serde_json::Value::Array(y)) => x.extend(y),
        (a, b) => {
            assert_eq!(*a, b, "the configs disagree");
        }
    }
}

fn write_config(name: &str, v: &serde_json::Value) -> PathBuf {
    let p = work_dir().join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    let out = Command::new("ignition-validate").arg(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process (and its process group) ended when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: signals the process group this test started.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn spawn_group(cmd: &mut Command) -> Group {
    use std::os::unix::process::CommandExt;
    Group(
        cmd.process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    )
}

#[test]
fn vm_example_over_kiln_run_ssh() {
    let img = devbox_image();
    let dir = tempfile::tempdir_in(work_dir()).unwrap();
    let key = dir.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(&key));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    // The test's user comes first, so `kiln run` names it in the ssh command.
    let mut cfg = serde_json::json!({
        "ignition": {"version": "3.3.0"},
        "passwd": {"users": [{"name": "tester", "sshAuthorizedKeys": [pubkey.trim()]}]}
    });
    let root = common::project_root();
    merge(
        &mut cfg,
        build_example(&root.join("examples/ignition/vm.toml"), None, "vm.ign"),
    );
    let cfg = write_config("vm-ssh.ign", &cfg);

    let console = common::vm_artifacts().join("examples-kiln-run.log");
    std::fs::create_dir_all(console.parent().unwrap()).unwrap();
    let stderr = dir.path().join("kiln-run.stderr");
    let started = Instant::now();
    let _vm = spawn_group(
        Command::new(common::kiln_bin())
            .arg("run")
            .arg(&img)
            .args(["--snapshot", "--ssh", "--ignition"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap()),
    );
    // The ssh command `kiln run` prints.
    let printed = loop {
        let text = std::fs::read_to_string(&stderr).unwrap();
        if let Some(l) = text
            .lines()
            .find_map(|l| l.split_once("once the VM is up: "))
        {
            break l.1.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "kiln run printed no ssh command:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(text.contains("Ctrl-a x quits"), "{text}");
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(words[0], "ssh", "{printed}");
    assert_eq!(words.last(), Some(&"tester@127.0.0.1"), "{printed}");
    let ssh = |remote: &str| {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(&words[1..])
            .arg(remote)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let t = common::boot_timeout();
    loop {
        let out = ssh("true");
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < t,
            "no ssh login after {:?}: {}\nconsole: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr),
            kiln::qemu::console_tail(&std::fs::read_to_string(&console).unwrap_or_default(), 40)
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    eprintln!("ssh true after {:.1} s", started.elapsed().as_secs_f64());
    let get = |remote: &str| {
        let out = ssh(remote);
        assert!(
            out.status.success(),
            "ssh {remote}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // examples/ignition/vm.toml
    assert_eq!(
        get("cat /etc/motd"),
        "Provisioned by Ignition from a kiln TOML config."
    );
    assert_eq!(get("cat /etc/hostname"), "kiln-vm");
    assert!(get("id -nG admin").split_whitespace().any(|g| g == "sudo"));
    assert_eq!(get("systemctl is-enabled hello.service"), "enabled");
    // The unit's line reached the console (kiln run's stdout).
    let deadline = Instant::now() + CMD;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("hello from kiln")
    {
        assert!(Instant::now() < deadline, "hello.service printed nothing");
        std::thread::sleep(Duration::from_secs(1));
    }
    // recipes/examples/devbox.toml and its devbox.d fragment.
    get("command -v vim.tiny git tmux jq htop strace tcpdump");
    assert!(get("cat /proc/cmdline")
        .split_whitespace()
        .any(|w| w == "quiet"));
    assert!(get("cat /etc/os-release").contains("ID="));
}

/// A CA and a certificate for 10.0.0.10 signed by it: (CA, cert, key).
fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let crt = dir.join("server.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let ext = dir.join("ext.cnf");
    std::fs::write(&ext, "subjectAltName=IP:10.0.0.10\n").unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=kiln-test-cluster-ca",
        ])
        .args(ec)
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=10.0.0.10"])
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    (ca, crt, key)
}

fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn sparse_disk(path: &Path, bytes: u64) -> Disk {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    Disk {
        path: path.to_path_buf(),
        read_only: false,
        serial: None,
    }
}

#[test]
fn bare_metal_and_k8s_worker_examples() {
    let img = devbox_image();
    let dir = tempfile::tempdir_in(work_dir()).unwrap();
    let root = common::project_root();
    // The worker example, its cluster CA standing in for the test's.
    let examples = dir.path().join("ignition");
    copy_tree(&root.join("examples/ignition"), &examples);
    let (ca, crt, key) = test_ca(dir.path());
    std::fs::copy(&ca, examples.join("files/cluster-ca.pem")).unwrap();
    let mut cfg = build_example(
        &root.join("examples/ignition/bare-metal.toml"),
        None,
        "bare-metal.ign",
    );
    merge(
        &mut cfg,
        build_example(
            &examples.join("k8s-worker.toml"),
            Some(&examples.join("k8s-worker.d")),
            "k8s-worker.ign",
        ),
    );
    let cfg = write_config("metal-k8s.ign", &cfg);

    // The control plane: serves the join file whose sha256 10-cluster.toml pins ("bar").
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("join")).unwrap();
    std::fs::write(www.join("join/worker.yaml"), "bar").unwrap();
    let port = common::fleet::free_port();
    let _server = spawn_group(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&crt)
            .arg("-key")
            .arg(&key)
            .current_dir(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );

    let mut o = VmOptions::new(&img, "examples-metal-k8s");
    o.artifacts = common::vm_artifacts();
    o.fw_cfg = vec![("opt/com.coreos/config".into(), cfg)];
    // sda (unused), sdb (data), sdc (swap: 4 GiB).
    o.scsi_disks = vec![
        sparse_disk(&dir.path().join("sda.raw"), 64 << 20),
        sparse_disk(&dir.path().join("sdb.raw"), 512 << 20),
        sparse_disk(&dir.path().join("sdc.raw"), 4200 << 20),
    ];
    o.net = Some("10.0.0.0/8".into());
    o.guestfwd = vec![("10.0.0.10:8443".into(), port)];
    let mut vm = Vm::start(o).unwrap();
    let t = common::boot_timeout();
    vm.wait_for("kernel arguments changed; rebooting", t)
        .unwrap();
    common::vm_login(&mut vm);
    let sh = |vm: &mut Vm, c: &str| vm.run_ok(c, CMD).unwrap();
    // A failed Ignition stage leaves a root shell in the initramfs: not this one.
    let (st, _) = vm.run("test -e /etc/initrd-release", CMD).unwrap();
    assert_ne!(
        st, 0,
        "the shell is the initramfs' emergency shell: Ignition failed"
    );
    let state = sh(&mut vm, "systemctl is-system-running --wait || true");
    eprintln!(
        "provisioned and logged in after {:?} ({state})",
        vm.elapsed()
    );

    // bare-metal.toml
    let cmdline = sh(&mut vm, "cat /proc/cmdline");
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    for w in ["console=tty0", "console=ttyS1,115200n8"] {
        assert!(words.contains(&w), "{w} missing: {cmdline}");
    }
    assert!(!words.contains(&"quiet"), "quiet left: {cmdline}");
    // What the disks stage made, for the log.
    let (_, diag) = vm
        .run(
            "lsblk -o NAME,SIZE,PARTLABEL,FSTYPE,MOUNTPOINTS; systemctl is-enabled var-lib-data.mount; \
             systemctl status --no-pager -n 20 var-lib-data.mount 'dev-disk-by\\x2dpartlabel-swap.swap'",
            CMD,
        )
        .unwrap();
    eprintln!("{diag}");
    let m = sh(&mut vm, "findmnt -n -o SOURCE,FSTYPE,OPTIONS /var/lib/data");
    assert!(
        m.contains("/dev/sdb1") && m.contains("ext4") && m.contains("noatime"),
        "{m}"
    );
    assert!(sh(&mut vm, "swapon --show=NAME --noheadings").contains("/dev/sdc1"));
    assert_eq!(
        sh(&mut vm, "stat -c %U:%G:%a /var/lib/data/backups"),
        "ops:operators:750"
    );
    let groups = sh(&mut vm, "id -nG ops");
    for g in ["operators", "sudo", "adm"] {
        assert!(groups.split_whitespace().any(|x| x == g), "ops: {groups}");
    }
    assert!(sh(&mut vm, "getent shadow ops").contains("$6$rounds=4096$kilnsalt$"));
    assert!(sh(&mut vm, "cat /etc/systemd/timesyncd.conf.d/10-ntp.conf")
        .contains("NTP=ntp1.example.net"));
    assert_eq!(
        sh(&mut vm, "readlink /etc/localtime"),
        "../usr/share/zoneinfo/UTC"
    );
    assert_eq!(
        sh(&mut vm, "systemctl is-enabled systemd-timesyncd.service"),
        "enabled"
    );
    assert_eq!(
        sh(&mut vm, "systemctl is-enabled apt-daily.timer || true"),
        "masked"
    );
    // Enabled; it cannot run here: the VM has one UART (ttyS0).
    assert_eq!(
        sh(&mut vm, "systemctl is-enabled serial-getty@ttyS1.service"),
        "enabled"
    );
    sh(
        &mut vm,
        "test -f /etc/systemd/system/serial-getty@ttyS1.service.d/10-autologin-off.conf",
    );

    // k8s-worker.toml + k8s-worker.d
    assert!(
        words.contains(&"systemd.unified_cgroup_hierarchy=1"),
        "{cmdline}"
    );
    assert!(words.contains(&"ipv6.disable=0"), "{cmdline}");
    assert_eq!(sh(&mut vm, "cat /etc/kubernetes/join.yaml"), "bar");
    assert_eq!(sh(&mut vm, "stat -c %a /etc/kubernetes/join.yaml"), "600");
    assert_eq!(sh(&mut vm, "cat /etc/kubernetes/node-labels"), "pool=gpu");
    sh(&mut vm, "test -d /etc/kubernetes/manifests");
    let kubelet =
        std::fs::read_to_string(root.join("examples/ignition/files/kubelet-config.yaml")).unwrap();
    assert_eq!(
        sh(&mut vm, "cat /var/lib/kubelet/config.yaml"),
        kubelet.trim()
    );
    let policy = std::fs::read_to_string(
        root.join("examples/ignition/files/etc-tree/containers/policy.json"),
    )
    .unwrap();
    assert_eq!(
        sh(&mut vm, "cat /etc/containers/policy.json"),
        policy.trim()
    );
    assert_eq!(
        sh(&mut vm, "readlink /etc/containers/policy-default.json"),
        "policy.json"
    );
    sh(
        &mut vm,
        "test -f /etc/containers/registries.conf.d/10-mirror.conf",
    );
    assert!(sh(&mut vm, "cat /etc/systemd/system/node-exporter.service").contains("GPU pool"));
    assert!(sh(
        &mut vm,
        "cat /etc/systemd/system/kubelet.service.d/10-kiln.conf"
    )
    .contains("KUBELET_CONFIG_ARGS"));
    assert_eq!(sh(&mut vm, "lsmod | grep -c '^br_netfilter'"), "1");
    assert_eq!(sh(&mut vm, "sysctl -n net.ipv4.ip_forward"), "1");
    assert!(sh(&mut vm, "id -nG core")
        .split_whitespace()
        .any(|g| g == "sudo"));
}
