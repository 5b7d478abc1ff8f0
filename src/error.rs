//! Errors a caller matches on. Everything else is `anyhow` with context.

/// Exit code for bad input (recipe, config, arguments): nothing was done.
pub const EXIT_USAGE: i32 = 2;

/// A user-input error: a file, a key path and a position, found before any work started.
/// `main` maps it to exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct InputError {
    /// The file the problem is in (or a description such as "command line").
    pub file: String,
    /// Dotted key path (`packages[3]`, `units.enable`), empty when not applicable.
    pub key: String,
    /// 1-based line and column, when known.
    pub pos: Option<(usize, usize)>,
    pub message: String,
}

impl InputError {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            file: file.into(),
            key: String::new(),
            pos: None,
            message: message.into(),
        }
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    pub fn at(mut self, line: usize, col: usize) -> Self {
        self.pos = Some((line, col));
        self
    }

    fn render(&self) -> String {
        let mut s = self.file.clone();
        if let Some((l, c)) = self.pos {
            s.push_str(&format!(":{l}:{c}"));
        }
        if !self.key.is_empty() {
            s.push_str(&format!(": {}", self.key));
        }
        format!("{s}: {}", self.message)
    }
}

/// Converts a byte offset in `text` to a 1-based (line, column).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count() + 1)
        .unwrap_or(1);
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_pos_key() {
        let e = InputError::new("r.toml", "unknown key")
            .key("units.foo")
            .at(3, 7);
        assert_eq!(e.to_string(), "r.toml:3:7: units.foo: unknown key");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}

/// A command that did its work and whose answer is "no": not a failure to report, but an
/// exit status that scripts test. Handlers return it as an error; `main` alone turns it
/// into the exit code ([`Verdict::code`]) without printing anything more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Verdict {
    /// `kiln upgrade --check`: an update is available (exit 77).
    #[error("an update is available")]
    UpdateAvailable,
    /// `kiln verify-reproducible`: the two builds differ (exit 1).
    #[error("the two builds differ")]
    NotReproducible,
}

impl Verdict {
    pub fn code(self) -> i32 {
        match self {
            Verdict::UpdateAvailable => 77,
            Verdict::NotReproducible => 1,
        }
    }
}
