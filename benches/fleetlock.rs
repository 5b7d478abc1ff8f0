//! FleetLock server latency (needs `etcd`): 10,000 requests from 50 concurrent clients
//! against one `kiln fleetlock serve` backed by a 3-member etcd cluster on 127.0.0.1,
//! a fifth of each kind (take a slot, give it back, no protocol header, malformed JSON,
//! unknown group). Prints wall time, throughput and latency percentiles per kind; the
//! answers themselves are checked by tests/fleetlock.rs.

mod common;

use common::fleetlock::{hammer, Etcd, Server, KINDS};
use std::path::Path;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    if common::listing() {
        return;
    }
    let td = tempfile::Builder::new()
        .prefix("kiln-fleetlock-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let etcd = Etcd::start(&td.path().join("etcd"), 3);
    let srv = Server::start(
        Path::new(common::KILN),
        td.path(),
        "bench",
        &etcd.endpoints(),
        &["load=50"],
    );
    let (clients, total) = (50, 10_000);
    let t = Instant::now();
    let answers = hammer(&srv.url(), "load", clients, total);
    let secs = t.elapsed().as_secs_f64();
    let unanswered = answers.iter().filter(|a| a.status == 0).count();
    println!(
        "fleetlock: {total} requests from {clients} clients in {secs:.2} s ({:.0} req/s), {unanswered} unanswered",
        total as f64 / secs
    );
    let mut all: Vec<Duration> = answers.iter().map(|a| a.latency).collect();
    println!(
        "fleetlock: latency all: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut all, 0.50),
        pct(&mut all, 0.99),
        pct(&mut all, 1.0)
    );
    for (k, name) in KINDS.iter().enumerate() {
        let mut v: Vec<Duration> = answers
            .iter()
            .filter(|a| a.kind == k)
            .map(|a| a.latency)
            .collect();
        println!(
            "fleetlock:   {name:<15} p50 {:.1} ms, p99 {:.1} ms",
            pct(&mut v, 0.50),
            pct(&mut v, 0.99)
        );
    }
}
