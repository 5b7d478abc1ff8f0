//! `kiln fleetlock serve`: a FleetLock server keeping its state in etcd.
//!
//! Answers as airlock does: 200 with an empty body when the request is done; 400
//! `invalid_client_identity` (header missing, body not the protocol's JSON, empty id or
//! group) or `unknown_group`; 500 `failed_lock` when every slot of the group is held by
//! others (the client retries later); 503 `etcd_unavailable` when no etcd member answers.
//! `GET /metrics` is Prometheus text. Nothing lives in the process but counters.

use super::etcd::Etcd;
use super::{ErrorBody, Request, Taken, PROTOCOL_HEADER};
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `serve` needs.
pub struct Options {
    pub etcd: Vec<String>,
    pub listen: String,
    /// Group name → slots. Requests for other groups are refused.
    pub groups: BTreeMap<String, u64>,
    /// Worker threads answering requests.
    pub threads: usize,
    /// Bounds each etcd request.
    pub etcd_timeout: Duration,
}

/// The largest request body read.
const MAX_BODY: u64 = 64 * 1024;
/// A client refused a slot counts as waiting this long after its last try.
const WAITING_FOR: Duration = Duration::from_secs(15 * 60);

const ENDPOINTS: [&str; 2] = ["pre-reboot", "steady-state"];
const RESULTS: [&str; 4] = ["ok", "refused", "bad_request", "error"];

struct State {
    etcd: Etcd,
    groups: BTreeMap<String, u64>,
    /// One writer per group in this process: its compare-and-swap loses no race to a
    /// sibling thread (other instances are still fenced by etcd's transaction alone).
    writers: BTreeMap<String, Mutex<()>>,
    /// requests[endpoint][result]
    requests: [[AtomicU64; 4]; 2],
    etcd_errors: AtomicU64,
    /// (group, id) → last refusal, for the waiting-clients gauge.
    waiting: Mutex<HashMap<(String, String), Instant>>,
}

/// A FleetLock answer: status and, for errors, the error body.
struct Answer {
    status: u16,
    error: Option<ErrorBody>,
}

impl Answer {
    fn ok() -> Answer {
        Answer {
            status: 200,
            error: None,
        }
    }

    fn err(status: u16, kind: &str, value: impl Into<String>) -> Answer {
        Answer {
            status,
            error: Some(ErrorBody {
                kind: kind.into(),
                value: value.into(),
            }),
        }
    }

    fn result_index(&self) -> usize {
        match (self.status, self.error.as_ref().map(|e| e.kind.as_str())) {
            (200, _) => 0,
            (_, Some("failed_lock")) => 1,
            (400..=499, _) => 2,
            _ => 3,
        }
    }
}

/// A running server: its address, and its worker threads (which run until the process
/// ends).
pub struct Server {
    pub addr: std::net::SocketAddr,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds the address and starts the workers.
    pub fn start(opts: Options) -> Result<Server> {
        let http = tiny_http::Server::http(&opts.listen)
            .map_err(|e| anyhow!("listening on {}: {e}", opts.listen))?;
        let addr = http
            .server_addr()
            .to_ip()
            .context("the server is not listening on an IP address")?;
        let http = Arc::new(http);
        let state = Arc::new(State {
            etcd: Etcd::new(&opts.etcd, opts.etcd_timeout),
            writers: opts
                .groups
                .keys()
                .map(|g| (g.clone(), Mutex::new(())))
                .collect(),
            groups: opts.groups,
            requests: Default::default(),
            etcd_errors: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        });
        let workers = (0..opts.threads.max(1))
            .map(|_| {
                let http = Arc::clone(&http);
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    while let Ok(req) = http.recv() {
                        state.handle(req);
                    }
                })
            })
            .collect();
        Ok(Server { addr, workers })
    }

    /// Serves until the process is stopped.
    pub fn wait(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

impl State {
    fn handle(&self, mut req: tiny_http::Request) {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let method = req.method().clone();
        let endpoint = match path.as_str() {
            "/v1/pre-reboot" => Some(0),
            "/v1/steady-state" => Some(1),
            _ => None,
        };
        if path == "/metrics" && method == tiny_http::Method::Get {
            let text = self.metrics();
            let header = tiny_http::Header::from_bytes(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .expect("a valid header");
            let _ = req.respond(tiny_http::Response::from_string(text).with_header(header));
            return;
        }
        let answer = match endpoint {
            None => Answer::err(404, "not_found", format!("no endpoint {path:?}")),
            Some(_) if method != tiny_http::Method::Post => Answer::err(
                405,
                "method_not_allowed",
                format!("{path} takes POST, not {method}"),
            ),
            Some(e) => {
                let a = self.fleetlock(e, &mut req);
                self.requests[e][a.result_index()].fetch_add(1, Ordering::Relaxed);
                a
            }
        };
        respond(req, answer);
    }

    /// A protocol request: check it, then take or give back the slot in etcd.
    fn fleetlock(&self, endpoint: usize, req: &mut tiny_http::Request) -> Answer {
        let header_ok = req
            .headers()
            .iter()
            .any(|h| h.field.equiv(PROTOCOL_HEADER) && h.value.as_str().trim() == "true");
        if !header_ok {
            return Answer::err(
                400,
                "invalid_client_identity",
                format!("missing or wrong '{PROTOCOL_HEADER}: true' header"),
            );
        }
        let mut body = Vec::new();
        if let Err(e) = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
            return Answer::err(
                400,
                "invalid_client_identity",
                format!("reading the body: {e}"),
            );
        }
        if body.len() as u64 > MAX_BODY {
            return Answer::err(400, "invalid_client_identity", "body too large");
        }
        let r: Request = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return Answer::err(
                    400,
                    "invalid_client_identity",
                    format!("the body is not {{\"client_params\":{{\"id\":…,\"group\":…}}}}: {e}"),
                )
            }
        };
        let (id, group) = (r.client_params.id, r.client_params.group);
        if let Err(m) = crate::validate::lock_holder_id(&id) {
            return Answer::err(400, "invalid_client_identity", m);
        }
        if group.is_empty() {
            return Answer::err(400, "invalid_client_identity", "empty client group");
        }
        let Some(&slots) = self.groups.get(&group) else {
            return Answer::err(400, "unknown_group", format!("unknown group {group:?}"));
        };
        let _writer = self
            .writers
            .get(&group)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        if endpoint == 0 {
            self.pre_reboot(&group, slots, &id)
        } else {
            self.steady_state(&group, slots, &id)
        }
    }

    fn pre_reboot(&self, group: &str, slots: u64, id: &str) -> Answer {
        let key = (group.to_string(), id.to_string());
        match super::take(&self.etcd, group, slots, id) {
            Ok(Taken::Granted(_)) => {
                self.waiting_lock().remove(&key);
                Answer::ok()
            }
            Ok(Taken::Full(sem)) => {
                self.waiting_lock().insert(key, Instant::now());
                Answer::err(
                    500,
                    "failed_lock",
                    format!(
                        "all {} slots of group {group:?} are held ({})",
                        sem.total_slots,
                        sem.holders.join(", ")
                    ),
                )
            }
            Err(e) => self.etcd_failed(e),
        }
    }

    fn steady_state(&self, group: &str, slots: u64, id: &str) -> Answer {
        self.waiting_lock()
            .remove(&(group.to_string(), id.to_string()));
        match super::give_back(&self.etcd, group, slots, id) {
            Ok(_) => Answer::ok(),
            Err(e) => self.etcd_failed(e),
        }
    }

    fn etcd_failed(&self, e: anyhow::Error) -> Answer {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("kiln fleetlock: etcd: {e:#}");
        Answer::err(503, "etcd_unavailable", format!("{e:#}"))
    }

    fn waiting_lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        // A worker that panicked holding the lock left a map that is still consistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prometheus text: slots per group (configured, and held as etcd says now), clients
    /// waiting for a slot (as this instance saw them), requests by endpoint and result.
    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, rows: Vec<(String, u64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for (labels, v) in rows {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let label = |g: &str| format!("{{group=\"{g}\"}}");
        gauge(
            "kiln_fleetlock_slots",
            "Reboot slots of a group (this server's configuration).",
            self.groups.iter().map(|(g, n)| (label(g), *n)).collect(),
        );
        let held = super::all_groups(&self.etcd);
        gauge(
            "kiln_fleetlock_etcd_up",
            "1 when etcd answered this scrape.",
            vec![(String::new(), u64::from(held.is_ok()))],
        );
        if let Ok(held) = held {
            let held: BTreeMap<String, u64> = held
                .into_iter()
                .map(|(g, s)| (g, s.holders.len() as u64))
                .collect();
            gauge(
                "kiln_fleetlock_slots_held",
                "Reboot slots of a group held now (from etcd).",
                self.groups
                    .keys()
                    .map(|g| (label(g), held.get(g).copied().unwrap_or(0)))
                    .collect(),
            );
        }
        let waiting = {
            let mut w = self.waiting_lock();
            w.retain(|_, t| t.elapsed() < WAITING_FOR);
            let mut n: BTreeMap<String, u64> = BTreeMap::new();
            for (g, _) in w.keys() {
                *n.entry(g.clone()).or_default() += 1;
            }
            n
        };
        gauge(
            "kiln_fleetlock_waiting_clients",
            "Clients refused a slot in the last 15 minutes and not granted one since (seen by this instance).",
            self.groups
                .keys()
                .map(|g| (label(g), waiting.get(g).copied().unwrap_or(0)))
                .collect(),
        );
        out.push_str(
            "# HELP kiln_fleetlock_requests_total FleetLock requests by endpoint and result.\n\
             # TYPE kiln_fleetlock_requests_total counter\n",
        );
        for (e, name) in ENDPOINTS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                out.push_str(&format!(
                    "kiln_fleetlock_requests_total{{endpoint=\"{name}\",result=\"{result}\"}} {}\n",
                    self.requests[e][r].load(Ordering::Relaxed)
                ));
            }
        }
        out.push_str(&format!(
            "# HELP kiln_fleetlock_etcd_errors_total Requests that failed because etcd did not answer.\n\
             # TYPE kiln_fleetlock_etcd_errors_total counter\nkiln_fleetlock_etcd_errors_total {}\n",
            self.etcd_errors.load(Ordering::Relaxed)
        ));
        out
    }
}

fn respond(req: tiny_http::Request, a: Answer) {
    let resp = match a.error {
        None => tiny_http::Response::from_string(String::new()).with_status_code(a.status),
        Some(e) => {
            let body = serde_json::to_string(&e).unwrap_or_else(|_| "{}".into());
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
                .expect("a valid header");
            tiny_http::Response::from_string(body)
                .with_status_code(a.status)
                .with_header(header)
        }
    };
    // The client may be gone; nothing to do then.
    let _ = req.respond(resp);
}
