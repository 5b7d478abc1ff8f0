//! The one printer for command results: `--json` prints the value as one pretty JSON
//! document on stdout; otherwise the command's own text. Every command that takes `--json`
//! prints through [`emit`] (or [`json`]), so machine output is uniform: one document,
//! trailing newline, nothing else on stdout.

use anyhow::{Context, Result};
use serde::Serialize;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding the result as JSON")?;
    println!("{text}");
    Ok(())
}

/// Prints `value` as JSON when `as_json`, else runs `text` (which prints for people).
pub fn emit<T: Serialize + ?Sized>(as_json: bool, value: &T, text: impl FnOnce(&T)) -> Result<()> {
    if as_json {
        json(value)
    } else {
        text(value);
        Ok(())
    }
}
