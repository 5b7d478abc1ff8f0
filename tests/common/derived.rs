//! Derived OS images for tests/oci_derived.rs and tests/vm_oci_derived.rs: podman with
//! its own storage, a one-package apt repository (a .deb built here with dpkg-deb, so no
//! network is needed), and a Containerfile `FROM` the published base that installs it.
//!
//! Two things of this sandbox, not of a normal Debian host, are worked around here:
//! - the process lacks CAP_SYS_RESOURCE and its nofile hard limit is below podman's
//!   default for root (1048576), so crun's setrlimit fails: the test's containers.conf
//!   sets `default_ulimits` within the limits;
//! - cgroups are hybrid (v1 controllers, hugetlb on the cgroup2 mount), which crun refuses
//!   ("cgroups in hybrid mode not supported"): podman runs in a private mount namespace
//!   without the cgroup2 mount, so crun sees plain cgroup v1.
//!
//! A bookworm host (cgroup v2, root with all capabilities) needs neither.

use kiln::cmd::Cmd;
use std::path::{Path, PathBuf};

/// The package the derived image adds.
pub const PKG: &str = "kiln-hello";
pub const PKG_VERSION: &str = "1.0";
/// What `kiln-hello` prints (read from its conffile, /etc/kiln-hello.conf).
pub const GREETING: &str = "kiln-hello: derived image";

/// podman with storage under `dir`.
pub struct Podman {
    root: PathBuf,
    conf: PathBuf,
    runroot: tempfile::TempDir,
    isolate: bool,
}

impl Podman {
    pub fn new(dir: &Path) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("containers.conf");
        let (soft, hard) = nofile();
        let n = soft.min(hard).min(65536);
        std::fs::write(
            &conf,
            format!("[containers]\ndefault_ulimits = [\"nofile={n}:{n}\", \"nproc=4096:4096\"]\n"),
        )
        .unwrap();
        // podman wants a short runroot.
        let runroot = tempfile::Builder::new()
            .prefix("kp")
            .tempdir_in("/tmp")
            .unwrap();
        Podman {
            root: dir.join("root"),
            conf,
            runroot,
            isolate: hybrid_cgroups(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let mut c = if self.isolate {
            Cmd::new("unshare").args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "umount /sys/fs/cgroup/unified && exec \"$@\"",
                "sh",
                "podman",
            ])
        } else {
            Cmd::new("podman")
        };
        c = c
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(self.runroot.path())
            .args(["--storage-driver", "overlay"]);
        c.args(args).env("CONTAINERS_CONF", &self.conf)
    }

    pub fn run(&self, args: &[&str]) -> String {
        self.cmd(args)
            .read()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e:#}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["system", "reset", "--force"]).run();
        // containers/storage leaves its overlay directory mounted on itself.
        let _ = Cmd::new("umount").arg(self.root.join("overlay")).run();
    }
}

fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// cgroup v1 with controllers on the cgroup2 mount too (what crun refuses).
fn hybrid_cgroups() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

/// A flat apt repository (`deb [trusted=yes] file:/run/kiln-repo ./`) holding
/// [`PKG`]: `/usr/bin/kiln-hello`, which prints its conffile's greeting. Returns the
/// repository directory; its `local.list` is the sources list to use.
pub fn apt_repo(dir: &Path) -> PathBuf {
    let pkg = dir.join("pkg");
    let repo = dir.join("repo");
    for d in ["DEBIAN", "usr/bin", "etc"] {
        std::fs::create_dir_all(pkg.join(d)).unwrap();
    }
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: {PKG}\nVersion: {PKG_VERSION}\nArchitecture: all\n\
             Maintainer: kiln tests <kiln@example.invalid>\nDepends: dash\n\
             Description: kiln derived-image test package\n"
        ),
    )
    .unwrap();
    std::fs::write(pkg.join("DEBIAN/conffiles"), "/etc/kiln-hello.conf\n").unwrap();
    std::fs::write(
        pkg.join("etc/kiln-hello.conf"),
        "GREETING='derived image'\n",
    )
    .unwrap();
    let bin = pkg.join("usr/bin/kiln-hello");
    std::fs::write(
        &bin,
        "#!/bin/sh\n. /etc/kiln-hello.conf\necho \"kiln-hello: $GREETING\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let deb = repo.join(format!("{PKG}_{PKG_VERSION}_all.deb"));
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(&deb)
        .run()
        .unwrap();
    let control = Cmd::new("dpkg-deb").arg("-f").arg(&deb).read().unwrap();
    let data = std::fs::read(&deb).unwrap();
    let sha = kiln::image::manifest::sha256_file(&deb).unwrap();
    std::fs::write(
        repo.join("Packages"),
        format!(
            "{}\nFilename: ./{}\nSize: {}\nSHA256: {sha}\n\n",
            control.trim_end(),
            deb.file_name().unwrap().to_str().unwrap(),
            data.len()
        ),
    )
    .unwrap();
    std::fs::write(
        repo.join("local.list"),
        "deb [trusted=yes] file:/run/kiln-repo ./\n",
    )
    .unwrap();
    repo
}

/// The Containerfile a user writes, with apt pointed at the test's repository only.
pub fn containerfile(from: &str) -> String {
    let apt = "apt-get -o Dir::Etc::SourceList=/run/kiln-repo/local.list \
               -o Dir::Etc::SourceParts=/nonexistent";
    format!(
        "FROM {from}\nRUN {apt} update && {apt} install -y {PKG} && {PKG}\n\
         LABEL org.opencontainers.image.title=kiln-derived-test\n"
    )
}

/// Builds the derived image from the podman image `from` and writes it to the OCI layout
/// `out` as `tag`. Returns the build log.
pub fn build(p: &Podman, from: &str, work: &Path, out: &Path, tag: &str) -> String {
    p.run(&["tag", from, "localhost/kiln-base:test"]);
    let repo = apt_repo(&work.join("apt"));
    let ctx = work.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        containerfile("localhost/kiln-base:test"),
    )
    .unwrap();
    let vol = format!("{}:/run/kiln-repo:ro", repo.display());
    let log = p.run(&[
        "build",
        "--network",
        "none",
        "-v",
        &vol,
        "-t",
        "localhost/kiln-derived:test",
        ctx.to_str().unwrap(),
    ]);
    p.run(&[
        "push",
        "-q",
        "localhost/kiln-derived:test",
        &format!("oci:{}:{tag}", out.display()),
    ]);
    log
}
