//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`
//! on the client port; keys and values base64): the three operations FleetLock needs,
//! with fail-over between the cluster's endpoints. Why the gateway and not gRPC:
//! docs/architecture.md.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// One key's value and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// The cluster's client URLs (`http://10.0.0.1:2379`); requests go to the endpoint that
/// last answered and move on to the next when it does not.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    current: AtomicUsize,
}

impl Etcd {
    /// `timeout` bounds each request to one endpoint.
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout.min(Duration::from_secs(2)))
                .timeout(timeout)
                .build(),
            current: AtomicUsize::new(0),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `body` to `path`, trying each endpoint once from the current one.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let n = self.endpoints.len();
        if n == 0 {
            bail!("no etcd endpoint given");
        }
        let start = self.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            match self.agent.post(&url).send_string(&body.to_string()) {
                Ok(resp) => {
                    let text = resp
                        .into_string()
                        .with_context(|| format!("reading etcd's answer from {url}"))?;
                    let v: Value = serde_json::from_str(&text)
                        .with_context(|| format!("etcd's answer from {url} is not JSON"))?;
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    errors.push(format!("{url}: HTTP {code}: {}", text.trim()));
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(anyhow!("no etcd endpoint answered: {}", errors.join("; ")))
    }

    /// The value of `key`, if it exists (a linearizable read).
    pub fn get(&self, key: &str) -> Result<Option<Kv>> {
        let v = self.post("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        match v
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            None => Ok(None),
            Some(kv) => Ok(Some(parse_kv(kv)?.1)),
        }
    }

    /// Every key starting with `prefix`, in key order.
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<(String, Kv)>> {
        let v = self.post(
            "/v3/kv/range",
            &json!({
                "key": B64.encode(prefix),
                "range_end": B64.encode(prefix_end(prefix.as_bytes())),
            }),
        )?;
        let mut out = Vec::new();
        for kv in v.get("kvs").and_then(Value::as_array).into_iter().flatten() {
            out.push(parse_kv(kv)?);
        }
        Ok(out)
    }

    /// Writes `value` to `key` only if the key is unchanged: its mod revision is still
    /// `expect`, or (`None`) it still does not exist. False when another writer won.
    pub fn put_if_unchanged(&self, key: &str, value: &[u8], expect: Option<i64>) -> Result<bool> {
        let k = B64.encode(key);
        let compare = match expect {
            Some(rev) => json!({
                "key": k, "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()
            }),
            None => json!({
                "key": k, "target": "VERSION", "result": "EQUAL", "version": "0"
            }),
        };
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [compare],
                "success": [{ "request_put": { "key": k, "value": B64.encode(value) } }],
            }),
        )?;
        if v.get("header").is_none() {
            bail!("etcd's transaction answer has no header: {v}");
        }
        // The gateway leaves out fields at their default value: no "succeeded" is false.
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// The smallest key after every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn parse_kv(kv: &Value) -> Result<(String, Kv)> {
    let field = |name: &str| kv.get(name).and_then(Value::as_str).unwrap_or("");
    let key = B64
        .decode(field("key"))
        .context("etcd returned a key that is not base64")?;
    let value = B64
        .decode(field("value"))
        .context("etcd returned a value that is not base64")?;
    let mod_revision = field("mod_revision")
        .parse()
        .with_context(|| format!("etcd returned a bad mod_revision in {kv}"))?;
    Ok((
        String::from_utf8_lossy(&key).into_owned(),
        Kv {
            value,
            mod_revision,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
