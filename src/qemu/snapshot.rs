//! Saving a running VM and resuming it (QEMU migration to a file): a booted system resumes
//! in seconds instead of paying a 40–90 s TCG boot again.
//!
//! The saved file holds the guest's RAM and device state, not its disks. A resume is
//! correct only on disks whose contents are exactly what they were at the save, so:
//! - [`Vm::save`] refuses a VM whose boot disk is a throwaway overlay (`snapshot: true`):
//!   its writes die with QEMU. Save a VM booted from a qcow2 overlay of the image
//!   ([`overlay`]) with `snapshot: false`;
//! - resume with [`VmOptions::incoming`] and the same machine (memory, vCPUs, firmware,
//!   disks in the same order, network on or off, guest-side forwards) on the same disk
//!   files with `snapshot: true`: the saved overlay is never written again, so any number
//!   of VMs resume from it, one after another or at once.
//!
//! The guest's clock resumes where it was saved; [`Vm::set_clock`] brings it to now.

use super::optstr::shell_path;
use super::vm::Vm;
use crate::cmd::Cmd;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// A qcow2 overlay at `path` whose backing file is `image`: a boot disk a VM can write
/// and then be saved with, leaving `image` untouched.
pub fn overlay(image: &Path, path: &Path) -> Result<()> {
    let image = image
        .canonicalize()
        .with_context(|| format!("resolving {}", image.display()))?;
    let fmt = super::options::image_format(&image)?;
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(&image)
        .arg(path)
        .run()
        .with_context(|| format!("creating the overlay {}", path.display()))?;
    Ok(())
}

impl Vm {
    /// Saves the running guest to `state` and stops QEMU. The VM needs a monitor and a
    /// boot disk that keeps its writes (see the module documentation). The guest is
    /// stopped first (one pass over its RAM, nothing left to converge); a resume starts it
    /// again. Written to a temp file first: `state` appears only complete.
    pub fn save(&mut self, state: &Path) -> Result<()> {
        if self.options().snapshot {
            bail!(
                "VM {}: its disks are throwaway overlays (snapshot=on), so a saved state \
                 could never be resumed on the disks it ran on",
                self.options().name
            );
        }
        let dir = state
            .parent()
            .with_context(|| format!("{} has no directory", state.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".state-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        let uri = format!("exec:cat > {}", shell_path(tmp.path())?);
        self.qmp("stop", serde_json::Value::Null)?;
        self.qmp("migrate", serde_json::json!({ "uri": uri }))?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let st = self.qmp("query-migrate", serde_json::Value::Null)?;
            match st["status"].as_str().unwrap_or_default() {
                "completed" => break,
                "failed" | "cancelled" => bail!(
                    "saving VM {}: migration {}: {}",
                    self.options().name,
                    st["status"],
                    st["error-desc"]
                ),
                _ if Instant::now() > deadline => {
                    bail!(
                        "saving VM {}: not done after 10 minutes",
                        self.options().name
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", tmp.path().display()))?;
        tmp.persist(state)
            .with_context(|| format!("renaming the saved state to {}", state.display()))?;
        self.qmp("quit", serde_json::Value::Null).ok();
        self.wait_exit(Duration::from_secs(60))
    }

    /// Waits until a VM started with [`VmOptions::incoming`] has loaded its state and runs.
    pub(crate) fn wait_resumed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.qmp("query-status", serde_json::Value::Null)?;
            match st["status"].as_str().unwrap_or_default() {
                "running" => return Ok(()),
                // Saved stopped (see `save`): loaded, now let it run.
                "paused" => {
                    self.qmp("cont", serde_json::Value::Null)?;
                }
                "inmigrate" | "prelaunch" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => bail!(
                    "VM {} did not resume from its saved state (status {other})",
                    self.options().name
                ),
            }
        }
    }

    /// Sets the guest's clock to the host's (a resumed guest's clock stands where it was
    /// saved). Needs the root shell on the console ([`Vm::login`]'s).
    pub fn set_clock(&mut self, timeout: Duration) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("reading the host clock")?;
        self.run_ok(
            &format!("date -u -s @{} >/dev/null", now.as_secs()),
            timeout,
        )?;
        Ok(())
    }
}
