//! A software TPM 2.0 for a VM: `swtpm` (package `swtpm`) serving QEMU's TPM emulator
//! backend on a unix socket in the VM's work directory.
//!
//! One swtpm per VM, started before QEMU and stopped after it (also when QEMU fails to
//! start, and on SIGINT/SIGTERM through [`crate::cleanup`], which stops every child
//! process). Its state is either fresh — in the VM's work directory, gone with it — or a
//! directory the caller keeps, so the same "chip" (its seeds, sealed objects and NV
//! indexes) is seen across boots of one machine.

use super::optstr::opt_path;
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a VM's TPM keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmState {
    /// A new TPM, as if the machine had a new (or cleared) chip: its state lives in the
    /// VM's work directory and is removed when the VM ends.
    Fresh,
    /// The TPM whose state is in this directory (created when missing, kept afterwards):
    /// boot the same machine again with the same chip.
    Dir(PathBuf),
}

/// The control socket of the swtpm of the VM whose work directory is `work`.
pub fn socket(work: &Path) -> PathBuf {
    work.join("swtpm.sock")
}

/// QEMU's arguments for the TPM of the VM whose work directory is `work`: a TPM 2.0 TIS
/// device (the interface every firmware and kernel drives) on swtpm's socket.
pub fn qemu_args(work: &Path) -> Result<Vec<String>> {
    Ok(vec![
        "-chardev".into(),
        format!("socket,id=chrtpm,path={}", opt_path(&socket(work))?),
        "-tpmdev".into(),
        "emulator,id=tpm0,chardev=chrtpm".into(),
        "-device".into(),
        "tpm-tis,tpmdev=tpm0".into(),
    ])
}

/// A running swtpm, stopped when dropped.
pub struct Swtpm {
    handle: Option<duct::Handle>,
    /// The state directory (inside the work directory for [`TpmState::Fresh`]).
    pub state: PathBuf,
}

impl Swtpm {
    /// Starts swtpm for the VM whose work directory is `work` and waits until its socket
    /// is there. Its log is `work/swtpm.log`.
    pub fn start(state: &TpmState, work: &Path) -> Result<Swtpm> {
        crate::cmd::require_tools(&[("swtpm", "swtpm")])?;
        let dir = match state {
            TpmState::Fresh => work.join("tpm-state"),
            TpmState::Dir(d) => d.clone(),
        };
        create_private_dir(&dir)?;
        let sock = socket(work);
        let log = work.join("swtpm.log");
        let handle = Cmd::new("swtpm")
            .args(["socket", "--tpm2", "--terminate"])
            .arg("--tpmstate")
            .arg(format!("dir={},mode=0600", swtpm_path(&dir)?))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", swtpm_path(&sock)?))
            .spawn_logged(&log)?;
        let t = Instant::now();
        while !sock.exists() {
            if let Ok(Some(_)) = handle.try_wait() {
                bail!(
                    "swtpm exited at once (state {}):\n{}",
                    dir.display(),
                    crate::cmd::log_tail(&log)
                );
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = handle.kill();
                bail!("swtpm did not create its socket {} in 20 s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Swtpm {
            handle: Some(handle),
            state: dir,
        })
    }

    /// Stops swtpm now (it writes its state as commands come in, so nothing is lost).
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.kill();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A path in a swtpm option string: absolute, and without `,` (swtpm's option parser,
/// unlike QEMU's, has no escape for it).
fn swtpm_path(p: &Path) -> Result<String> {
    let abs = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    let s = abs
        .to_str()
        .with_context(|| format!("{} is not UTF-8", abs.display()))?;
    if s.contains(',') {
        bail!("swtpm cannot use a path with a ',' in it: {s}");
    }
    Ok(s.to_string())
}

/// `dir` (and its parents) created; `dir` itself 0700: a TPM's state holds its seeds.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the TPM state directory {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swtpm_serves_its_socket_and_keeps_a_kept_state() {
        if !crate::cmd::have("swtpm") {
            panic!("swtpm is not installed (make deps)");
        }
        let work = tempfile::tempdir().unwrap();
        let kept = work.path().join("kept-state");
        let mut t = Swtpm::start(&TpmState::Dir(kept.clone()), work.path()).unwrap();
        assert!(socket(work.path()).exists());
        let mode = std::fs::metadata(&kept).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        t.stop();
        assert!(kept.is_dir(), "a kept state directory stays");
        let a = qemu_args(work.path()).unwrap().join(" ");
        assert!(a.contains("-tpmdev emulator,id=tpm0,chardev=chrtpm"), "{a}");
        assert!(a.contains("-device tpm-tis,tpmdev=tpm0"), "{a}");
        let e = Swtpm::start(&TpmState::Dir(work.path().join("a,b")), work.path());
        assert!(format!("{:#}", e.err().unwrap()).contains("','"));
    }
}
