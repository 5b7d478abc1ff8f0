//! `kiln recipe ...`: look at a recipe the way compose will see it.

use super::types::Recipe;
use crate::error::InputError;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum RecipeCommand {
    /// Print the resolved recipe: includes and fragments merged, defaults filled in,
    /// paths absolute. Checks it like compose does (exit code 2 on bad input).
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The recipe file (TOML).
    pub recipe: PathBuf,
    /// Print only this key (`ref`, `version`, `packages`, `units.enable`,
    /// `metadata.KEY`, `sources`): a scalar as is, a list one entry per line.
    #[arg(long, value_name = "KEY")]
    pub field: Option<String>,
    /// Print JSON instead of TOML (with --field: that value as JSON).
    #[arg(long)]
    pub json: bool,
}

pub fn cmd(c: RecipeCommand) -> Result<()> {
    match c {
        RecipeCommand::Show(a) => cmd_show(a),
    }
}

/// The fields `--field` accepts at the top level, as spelled in recipes.
fn field_names(v: &serde_json::Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn lookup<'a>(
    root: &'a serde_json::Value,
    field: &str,
) -> Result<&'a serde_json::Value, InputError> {
    let mut cur = root;
    let mut path = String::new();
    let parts: Vec<&str> = field.split('.').collect();
    for (i, part) in parts.iter().copied().enumerate() {
        // Metadata keys may contain dots: the whole rest may be one key.
        if i + 1 < parts.len() {
            if let Some(v) = cur.as_object().and_then(|o| o.get(&parts[i..].join("."))) {
                return Ok(v);
            }
        }
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(part);
        let next = cur.as_object().and_then(|o| o.get(part));
        cur = match next {
            Some(v) => v,
            None => {
                let names = field_names(cur);
                let hint = super::validate::suggest(part, names.iter().map(String::as_str))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                let known = if names.is_empty() {
                    String::new()
                } else {
                    format!(" (known: {})", names.join(", "))
                };
                return Err(InputError::new(
                    "command line",
                    format!("the resolved recipe has no field `{path}`{hint}{known}"),
                )
                .key("--field"));
            }
        };
    }
    Ok(cur)
}

fn to_json(recipe: &Recipe) -> Result<serde_json::Value> {
    serde_json::to_value(recipe).context("encoding the recipe as JSON")
}

fn cmd_show(a: ShowArgs) -> Result<()> {
    let recipe = super::load(&a.recipe)?;
    for w in recipe.warnings() {
        eprintln!("kiln: warning: {w}");
    }
    let json = to_json(&recipe)?;
    if let Some(field) = &a.field {
        let v = lookup(&json, field)?;
        if a.json {
            return crate::output::json(v);
        }
        print_plain(v);
        return Ok(());
    }
    if a.json {
        return crate::output::json(&json);
    }
    print!("{}", render_toml(&recipe)?);
    Ok(())
}

fn print_plain(v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => {}
        J::String(s) => println!("{s}"),
        J::Array(items) => {
            for i in items {
                match i {
                    J::String(s) => println!("{s}"),
                    other => println!("{other}"),
                }
            }
        }
        J::Object(o) => {
            for (k, v) in o {
                match v {
                    J::String(s) => println!("{k}={s}"),
                    J::Array(items) => println!(
                        "{k}={}",
                        items
                            .iter()
                            .map(|i| i
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string()))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    other => println!("{k}={other}"),
                }
            }
        }
        other => println!("{other}"),
    }
}

/// The resolved recipe as TOML that kiln itself would load (paths absolute), headed by
/// the list of merged files as comments.
pub fn render_toml(recipe: &Recipe) -> Result<String> {
    let mut out = String::from("# Resolved recipe, merged from:\n");
    for s in &recipe.sources {
        out.push_str(&format!("#   {}\n", s.display()));
    }
    let mut r = recipe.clone();
    r.sources.clear();
    let body = toml::to_string(&r).context("encoding the recipe as TOML")?;
    for line in body.lines().filter(|l| *l != "sources = []") {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}
