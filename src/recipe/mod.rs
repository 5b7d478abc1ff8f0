//! Recipes: the declarative TOML that describes an OS tree.
//!
//! [`types`] holds the typed, resolved [`Recipe`]; [`load()`] reads a recipe file with its
//! includes and `NAME.d/` fragments, merges them and validates the result, reporting bad
//! input as an [`crate::error::InputError`] (file, key path, line:col) before any work starts.
//! The format and merge rules are documented in docs/recipes.md.

pub mod cli;
pub mod glob;
pub mod load;
mod parse;
pub mod types;
pub mod validate;

pub use load::{load, load_input};
pub use types::*;
