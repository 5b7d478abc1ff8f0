//! Compose: a recipe becomes a Debian root (mmdebstrap), converted to the OSTree layout and
//! committed with metadata.
//!
//! Stages, one module each: [`sources`] (host apt sources, mirror state), [`bootstrap`]
//! (mmdebstrap with cached .debs), [`overlay`], [`postprocess`] (units, scripts,
//! remove-files), [`initramfs`] (dracut; [`initramfs_cache`] reuses an image whose inputs, read from a
//! [`dracut_trace`], are unchanged), [`layout`] (OSTree conversion), [`delta`] (a root from a cached one by package
//! changes), [`treecache`] (bootstrapped roots
//! in a private bare repo, hardlink checkouts, commits through the dev/ino cache), [`inputhash`]
//! (no-change detection); [`pipeline`] runs them and commits; [`cli`] is `kiln compose`.

pub mod bootstrap;
pub mod cachelock;
mod checks;
pub mod chroot;
pub mod cli;
pub mod delta;
pub mod dracut_trace;
pub mod epoch;
pub mod initramfs;
pub mod initramfs_cache;
pub mod inputhash;
mod inputs;
pub mod layout;
pub mod overlay;
pub mod pipeline;
pub mod postprocess;
mod root;
pub mod sbom;
pub mod scratch;
pub mod sources;
pub mod treecache;

pub use pipeline::{compose, ComposeOptions, ComposeOutcome, MIRROR_STATE_KEY};
