//! The one runner for external programs.
//!
//! Every external command kiln runs goes through [`Cmd`]: the command line is recorded so
//! that a failure names exactly what was run, and the tail of its stderr is part of the
//! error. Nothing here goes through a shell unless the caller asks for `sh -c` itself.

use anyhow::{Context, Result};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// How many trailing bytes of stderr an error message carries.
const STDERR_TAIL: usize = 4000;

/// An external command, built up and then run once.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_removes: Vec<OsString>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as (lossy) UTF-8 with the trailing newline removed.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            env_removes: Vec::new(),
            dir: None,
            stdin: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.env_removes.push(k.as_ref().to_owned());
        self
    }

    pub fn dir(mut self, d: impl AsRef<Path>) -> Self {
        self.dir = Some(d.as_ref().to_owned());
        self
    }

    pub fn stdin_bytes(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The command line as a shell-like string, for messages.
    pub fn display(&self) -> String {
        let mut s = quote(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&quote(&a.to_string_lossy()));
        }
        s
    }

    fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.envs {
            e = e.env(k, v);
        }
        for k in &self.env_removes {
            e = e.env_remove(k);
        }
        if let Some(d) = &self.dir {
            e = e.dir(d);
        }
        if let Some(input) = &self.stdin {
            e = e.stdin_bytes(input.clone());
        }
        e
    }

    /// Runs the command, capturing stdout and stderr. A non-zero exit is an error that
    /// names the command line, the exit status and the tail of stderr.
    pub fn run(&self) -> Result<Output> {
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("failed to start `{}`", self.display()))?;
        if !out.status.success() {
            return Err(CmdError {
                cmdline: self.display(),
                status: describe_status(&out.status),
                stderr: tail(&out.stderr),
            }
            .into());
        }
        Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Runs the command and returns its stdout as a trimmed string.
    pub fn read(&self) -> Result<String> {
        Ok(self.run()?.stdout_str())
    }

    /// Runs the command with stdout and stderr appended to `log` (for long, chatty tools
    /// such as mmdebstrap or dracut). On failure the error carries the log's tail.
    pub fn run_logged(&self, log: &Path) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        writeln!(f, "$ {}", self.display())
            .with_context(|| format!("writing {}", log.display()))?;
        let out = self
            .expression()
            .stderr_to_stdout()
            .stdout_file(f)
            .unchecked()
            .run()
            .with_context(|| format!("failed to start `{}`", self.display()))?;
        if !out.status.success() {
            let log_bytes = std::fs::read(log).unwrap_or_default();
            return Err(CmdError {
                cmdline: self.display(),
                status: describe_status(&out.status),
                stderr: format!("{}\n(full log: {})", tail(&log_bytes), log.display()),
            }
            .into());
        }
        Ok(())
    }

    /// Runs the command with stdio inherited (interactive use such as `kiln run`).
    pub fn run_inherit(&self) -> Result<std::process::ExitStatus> {
        let out = self
            .expression()
            .unchecked()
            .run()
            .with_context(|| format!("failed to start `{}`", self.display()))?;
        Ok(out.status)
    }

    /// Starts the command without waiting; stdout and stderr go to `log`.
    pub fn spawn_logged(&self, log: &Path) -> Result<duct::Handle> {
        self.expression()
            .stderr_to_stdout()
            .stdout_path(log)
            .unchecked()
            .start()
            .with_context(|| format!("failed to start `{}`", self.display()))
    }
}

impl Cmd {
    /// Starts the command with its stdout readable while it runs (downloads, progress
    /// output); stderr goes to `log`. Reading to the end returns an error when the command
    /// failed, so a reader that reached EOF without error saw a complete, successful run.
    /// Dropping the reader early kills the command.
    pub fn reader_logged(&self, log: &Path) -> Result<duct::ReaderHandle> {
        self.expression()
            .stderr_path(log)
            .reader()
            .with_context(|| format!("failed to start `{}`", self.display()))
    }
}

/// The last bytes of a log file, for error messages about a command whose stderr went
/// there.
pub fn log_tail(log: &Path) -> String {
    tail(&std::fs::read(log).unwrap_or_default())
}

/// A failed external command. Callers may match on it (e.g. to retry).
#[derive(Debug, thiserror::Error)]
#[error("command failed ({status}): {cmdline}\n{stderr}")]
pub struct CmdError {
    pub cmdline: String,
    pub status: String,
    pub stderr: String,
}

fn describe_status(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end();
    if s.len() <= STDERR_TAIL {
        return s.to_string();
    }
    let mut start = s.len() - STDERR_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Fails naming every tool of `need` (program, Debian package) that is not installed, so
/// a command stops before any work instead of half way through.
pub fn require_tools(need: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<String> = need
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(p, pkg)| format!("{p} (package {pkg})"))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "missing host tools: {} (run `make deps`)",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.contains("sh -c 'echo oops >&2; exit 3'"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
    }

    #[test]
    fn read_trims_stdout() {
        assert_eq!(Cmd::new("echo").arg("hi").read().unwrap(), "hi");
    }

    #[test]
    fn logged_failure_carries_log_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let err = Cmd::new("sh")
            .args(["-c", "echo progress; echo broken >&2; false"])
            .run_logged(&log)
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("broken") && msg.contains("progress"), "{msg}");
    }
}
