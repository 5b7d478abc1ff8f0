//! A running VM: QEMU started with its serial console on a socket, waits for markers,
//! commands run on the console, the console log kept on failure.

use super::console::{console_tail, end_of_all, strip_ansi, strip_kernel_messages};
use super::options::{qemu_args, VmOptions};
use super::optstr::opt_path;
use crate::cmd::Cmd;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// The VM's TPM; dropped (stopped) after QEMU is killed, before `_work` goes.
    tpm: Option<super::tpm::Swtpm>,
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
        let tpm = match &opts.tpm {
            Some(state) => Some(super::tpm::Swtpm::start(state, work.path())?),
            None => None,
        };
        let mut args = qemu_args(&opts, work.path())?;
        args.extend([
            "-chardev".to_string(),
            format!("socket,id=s0,path={},server=on,wait=off", opt_path(&sock)?),
            "-serial".into(),
            "chardev:s0".into(),
        ]);
        let resume = opts.incoming.is_some();
        let qmp = (opts.monitor || resume).then(|| work.path().join("qmp.sock"));
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
        let mut vm = Vm {
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
            tpm,
            _work: work,
        };
        if resume {
            vm.wait_resumed(Duration::from_secs(300))?;
        }
        Ok(vm)
    }

    /// How this VM was started.
    pub fn options(&self) -> &VmOptions {
        &self.opts
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
    /// sending a probe until the shell answers. A probe typed before the shell started is
    /// lost (login flushes the terminal's input), so the first waits are short (2 s, then
    /// doubling up to 20 s): a lost probe costs seconds, not a fixed 20. A late answer to an
    /// earlier probe is harmless (each command's end is found by its own tag).
    pub fn login(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let keep = self.keep;
        let mut wait = Duration::from_secs(2);
        loop {
            self.send("\nstty -echo; PS1=''; PS2=''; unset PROMPT_COMMAND; dmesg -n 1; export PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 TERM=dumb\n")?;
            let answer = self.run("true", wait);
            wait = (wait * 2).min(Duration::from_secs(20));
            match answer {
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

    /// Stops QEMU now (and then its TPM).
    pub fn kill(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.kill();
        }
        if let Some(t) = self.tpm.as_mut() {
            t.stop();
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
