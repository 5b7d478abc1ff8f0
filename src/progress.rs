//! Progress reporting: a spinner per stage on a TTY, plain lines otherwise, silence on
//! stdout when `--json` is asked for (human lines always go to stderr).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Reports the stages of one long operation and records how long each took.
pub struct Progress {
    tty: bool,
    quiet: bool,
    stages: Vec<(String, f64)>,
}

/// One running stage; finish it with [`Stage::done`] (dropping it also finishes it).
pub struct Stage<'a> {
    owner: &'a mut Progress,
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
    finished: bool,
    /// Byte counting (see [`Progress::bytes_stage`]).
    bytes: Option<Bytes>,
}

/// The byte count of a [`Progress::bytes_stage`] and when a plain line was last printed.
struct Bytes {
    pos: u64,
    total: Option<u64>,
    last_line: Instant,
}

/// Whether progress is drawn (bars, spinners) rather than printed as plain lines: stderr is
/// a terminal that can move its cursor. `TERM=dumb` (a serial console driven by a script,
/// an editor's shell) gets plain lines.
fn draws() -> bool {
    can_draw(
        std::io::stderr().is_terminal(),
        std::env::var("TERM").ok().as_deref(),
    )
}

fn can_draw(is_terminal: bool, term: Option<&str>) -> bool {
    is_terminal && term != Some("dumb")
}

/// How often a byte-counting stage prints a plain line when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// `quiet` suppresses the human lines entirely (used by tests).
    pub fn new(quiet: bool) -> Self {
        Progress {
            tty: draws(),
            quiet,
            stages: Vec::new(),
        }
    }

    /// Starts a named stage.
    pub fn stage(&mut self, name: &str) -> Stage<'_> {
        let bar = if self.quiet {
            None
        } else if self.tty {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_message(name.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            Some(b)
        } else {
            eprintln!("kiln: {name}...");
            None
        };
        Stage {
            owner: self,
            name: name.to_string(),
            start: Instant::now(),
            bar,
            finished: false,
            bytes: None,
        }
    }

    /// Starts a stage that moves bytes: on a TTY a bar with bytes done, total, rate and
    /// ETA (bytes and rate only when `total` is unknown); otherwise a plain line at the
    /// start, one every few seconds with bytes and rate, and one at the end. Advance it
    /// with [`Stage::inc`] or [`Stage::set_position`].
    pub fn bytes_stage(&mut self, name: &str, total: Option<u64>) -> Stage<'_> {
        let bar = if self.quiet || !self.tty {
            if !self.quiet {
                match total {
                    Some(t) => eprintln!("kiln: {name}: {} to write...", human_bytes(t)),
                    None => eprintln!("kiln: {name}..."),
                }
            }
            None
        } else {
            let (b, template) = match total {
                Some(t) => (
                    ProgressBar::new(t),
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} {msg} {bytes} {binary_bytes_per_sec} ({elapsed})",
                ),
            };
            b.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(name.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            Some(b)
        };
        Stage {
            owner: self,
            name: name.to_string(),
            start: Instant::now(),
            bar,
            finished: false,
            bytes: Some(Bytes {
                pos: 0,
                total,
                last_line: Instant::now(),
            }),
        }
    }

    /// A plain informational line (stderr), unless quiet.
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("kiln: {msg}");
        }
    }

    /// Seconds per finished stage, in order.
    pub fn timings(&self) -> &[(String, f64)] {
        &self.stages
    }

    /// Timings as a JSON object `{stage: seconds}` (rounded to milliseconds).
    pub fn timings_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.stages {
            m.insert(k.clone(), serde_json::json!((v * 1000.0).round() / 1000.0));
        }
        serde_json::Value::Object(m)
    }
}

impl Stage<'_> {
    /// Updates the stage's message (e.g. a count) on a TTY.
    pub fn set_message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{}: {msg}", self.name));
        }
    }

    /// Advances a byte-counting stage by `n` bytes.
    pub fn inc(&mut self, n: u64) {
        let pos = self.bytes.as_ref().map(|b| b.pos).unwrap_or(0) + n;
        self.set_position(pos);
    }

    /// Sets how many bytes a byte-counting stage has moved.
    pub fn set_position(&mut self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
        let quiet = self.owner.quiet;
        let tty = self.owner.tty;
        let elapsed = self.start.elapsed().as_secs_f64();
        let Some(bytes) = self.bytes.as_mut() else {
            return;
        };
        bytes.pos = pos;
        if !quiet && !tty && bytes.last_line.elapsed() >= PLAIN_EVERY {
            bytes.last_line = Instant::now();
            eprintln!(
                "kiln: {}: {}",
                self.name,
                byte_line(pos, bytes.total, elapsed)
            );
        }
    }

    pub fn done(mut self) -> f64 {
        self.finish()
    }

    fn finish(&mut self) -> f64 {
        if self.finished {
            return 0.0;
        }
        self.finished = true;
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.owner.quiet {
            match &self.bytes {
                Some(b) => eprintln!(
                    "kiln: {} done in {:.1}s: {}",
                    self.name,
                    secs,
                    byte_line(b.pos, None, secs)
                ),
                None => eprintln!("kiln: {} done in {:.1}s", self.name, secs),
            }
        }
        self.owner.stages.push((self.name.clone(), secs));
        secs
    }
}

/// How often a [`Live`] line prints a plain line when stderr is not a terminal.
const LIVE_EVERY: Duration = Duration::from_secs(2);

/// A one-line status that a callback keeps current (a network pull's counters): on a TTY a
/// spinner with the latest message; otherwise a plain `kiln: MESSAGE` line at most every
/// few seconds; nothing when quiet. Clones share the line, so one can move into a
/// callback; [`Live::finish`] clears it.
#[derive(Clone)]
pub struct Live {
    bar: Option<ProgressBar>,
    /// When not quiet and not on a TTY: when the last plain line was printed (or the start).
    plain: Option<std::rc::Rc<std::cell::Cell<Instant>>>,
}

impl Live {
    pub fn new(quiet: bool) -> Self {
        let tty = draws();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} kiln: {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let plain =
            (!quiet && !tty).then(|| std::rc::Rc::new(std::cell::Cell::new(Instant::now())));
        Live { bar, plain }
    }

    /// Shows the message `msg` makes (only called when it will be shown).
    pub fn update(&self, msg: impl FnOnce() -> String) {
        if let Some(b) = &self.bar {
            b.set_message(msg());
        } else if let Some(last) = &self.plain {
            if last.get().elapsed() >= LIVE_EVERY {
                last.set(Instant::now());
                eprintln!("kiln: {}", msg());
            }
        }
    }

    /// Clears the line (a TTY's spinner); the caller prints its summary after it.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `1.0 GiB of 4.0 GiB (25%), 120.0 MiB/s`.
fn byte_line(pos: u64, total: Option<u64>, secs: f64) -> String {
    let rate = if secs > 0.0 {
        format!(", {}/s", human_bytes((pos as f64 / secs) as u64))
    } else {
        String::new()
    };
    match total {
        Some(t) if t > 0 => format!(
            "{} of {} ({}%){rate}",
            human_bytes(pos),
            human_bytes(t),
            pos.saturating_mul(100) / t
        ),
        _ => format!("{}{rate}", human_bytes(pos)),
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            self.finished = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumb_terminals_get_plain_lines() {
        assert!(can_draw(true, Some("xterm-256color")));
        assert!(can_draw(true, None));
        assert!(!can_draw(true, Some("dumb")));
        assert!(!can_draw(false, Some("xterm")));
    }

    #[test]
    fn byte_lines_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
        assert_eq!(
            byte_line(1 << 30, Some(4 << 30), 2.0),
            "1.0 GiB of 4.0 GiB (25%), 512.0 MiB/s"
        );
        assert_eq!(byte_line(2048, None, 0.0), "2.0 KiB");
    }

    #[test]
    fn quiet_live_line_shows_nothing() {
        let l = Live::new(true);
        assert!(l.bar.is_none() && l.plain.is_none());
        l.update(|| unreachable!("a quiet line makes no message"));
        l.finish();
    }

    #[test]
    fn bytes_stage_counts() {
        let mut p = Progress::new(true);
        let mut s = p.bytes_stage("write", Some(100));
        s.inc(40);
        s.inc(60);
        assert_eq!(s.bytes.as_ref().unwrap().pos, 100);
        s.done();
        assert_eq!(p.timings().len(), 1);
    }
}
