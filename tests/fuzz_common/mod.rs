//! The fuzz harness shared by tests/fuzz.rs and tests/ignition_fuzz.rs.
//!
//! - Each target runs PROPTEST_CASES random cases (a few dozen by default, so the suite
//!   stays fast), repeated in batches until KILN_FUZZ_SECS have passed (`make fuzz`).
//! - Findings are kept: a failing case's seed is written to
//!   `tests/fuzz-regressions/<target>.txt` (checked in), and every later run replays the
//!   seeds of that file before its random cases.
//! - A counting allocator measures what a parser allocates, so a target can check that
//!   lengths read from the input are bounded by the input's size (see [`measure`]).
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::test_runner::{
    Config as PtConfig, FileFailurePersistence, TestCaseError, TestRunner,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The regression file of target `name`.
pub fn regressions(name: &str) -> PathBuf {
    root().join(format!("tests/fuzz-regressions/{name}.txt"))
}

/// Runs `test` over `strat`: the seeds in the target's regression file first, then
/// PROPTEST_CASES (default `default_cases`) random cases, in batches until KILN_FUZZ_SECS
/// pass (at least one batch). A failure is shrunk, its seed saved, and the test panics.
pub fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strat: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = env_num("PROPTEST_CASES", default_cases.into()) as u32;
    let budget = Duration::from_secs(env_num("KILN_FUZZ_SECS", 0));
    let file = regressions(name);
    assert!(
        file.is_file(),
        "{} is missing: every fuzz target has a checked-in regression file",
        file.display()
    );
    // proptest wants a &'static str; one small leak per target and batch run.
    let path: &'static str = Box::leak(file.to_str().unwrap().to_string().into_boxed_str());
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let mut runner = TestRunner::new(PtConfig {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(path))),
            ..PtConfig::default()
        });
        if let Err(e) = runner.run(&strat, &test) {
            panic!("{name}: {e}\n(seed saved in {path})");
        }
        total += cases as u64;
        if start.elapsed() >= budget {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {total} cases in {:.1} s, no failure",
        start.elapsed().as_secs_f64()
    );
}

/// Byte-level edits: (position, op, byte).
pub fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 1..8)
}

/// Applies [`edits`] to `text`: insert, delete, replace a byte (often a byte that matters
/// to JSON or TOML), or duplicate a slice (repeats keys and list entries).
pub fn apply_edits(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut b = text.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        let at = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        let interesting = b"{}[]\",:0-\\/.\n =#'";
        let c = if byte < 128 {
            interesting[byte as usize % interesting.len()]
        } else {
            byte
        };
        match op {
            0 => b.insert(at, c),
            1 if at < b.len() => {
                b.remove(at);
            }
            2 if at < b.len() => b[at] = c,
            _ => {
                let end = (at + (byte as usize % 40)).min(b.len());
                let slice = b[at..end].to_vec();
                for (i, x) in slice.into_iter().enumerate() {
                    b.insert(end + i, x);
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Text made of `tokens`.
pub fn token_text(tokens: &[&'static str]) -> impl Strategy<Value = String> {
    let tokens = tokens.to_vec();
    proptest::collection::vec(0..tokens.len(), 0..60)
        .prop_map(move |ix| ix.into_iter().map(|i| tokens[i]).collect::<String>())
}

/// The system allocator, counting per thread the bytes live and the largest block.
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(add: usize, sub: usize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + add as isize - sub as isize;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
    let _ = LARGEST.try_with(|l| l.set(l.get().max(add)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        note(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note(new_size, layout.size());
        }
        p
    }
}

/// What a call allocated on this thread.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Most bytes live at once, above what was live before the call.
    pub peak: usize,
    /// The largest single block.
    pub largest: usize,
}

/// Runs `f` and reports its allocations (needs `#[global_allocator] static A: Counting`).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    LARGEST.with(|l| l.set(0));
    let out = f();
    let usage = Usage {
        peak: (PEAK.with(|p| p.get()) - base).max(0) as usize,
        largest: LARGEST.with(|l| l.get()),
    };
    (out, usage)
}
