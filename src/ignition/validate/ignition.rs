//! The `ignition` section: config merge/replace, TLS certificate authorities, proxy,
//! timeouts.

use super::resource::url_scheme;
use super::{arr, int, st, Validator, P};
use crate::ignition::json::Node;

impl Validator<'_> {
    pub(super) fn ignition(&mut self, root: &Node, ign: &Node, p: &P) {
        if let Some(cfg) = ign.get("config") {
            let pc = p.k("config");
            for (i, m) in arr(cfg, "merge").iter().enumerate() {
                if self.minor >= 1 {
                    // 3.0's config references had an optional source.
                    self.required_source(root, m, &pc.k("merge").i(i));
                }
                self.resource(root, m, &pc.k("merge").i(i), false);
            }
            self.dups(root, &[(pc.k("merge"), arr(cfg, "merge"))], |n| {
                st(n, "source").unwrap_or("").to_string()
            });
            if let Some(rep) = cfg.get("replace") {
                self.resource(root, rep, &pc.k("replace"), false);
            }
        }
        if let Some(tls) = ign.get("security").and_then(|s| s.get("tls")) {
            let pt = p.k("security").k("tls").k("certificateAuthorities");
            let cas = arr(tls, "certificateAuthorities");
            for (i, ca) in cas.iter().enumerate() {
                self.required_source(root, ca, &pt.i(i));
                self.resource(root, ca, &pt.i(i), false);
            }
            self.dups(root, &[(pt, cas)], |n| {
                st(n, "source").unwrap_or("").to_string()
            });
        }
        if let Some(px) = ign.get("proxy").filter(|_| self.minor >= 1) {
            let pp = p.k("proxy");
            for (k, http_ok) in [("httpProxy", true), ("httpsProxy", false)] {
                if let Some(u) = st(px, k) {
                    match url_scheme(u) {
                        Err(e) => self.err(root, &pp.k(k), e),
                        Ok(s) if s != "http" && s != "https" => {
                            self.err(root, &pp.k(k), "proxies must be http(s)")
                        }
                        Ok(s) if s == "http" && !http_ok => self.warn(
                            root,
                            &pp.k(k),
                            "insecure plaintext HTTP proxy specified for HTTPS resources",
                        ),
                        Ok(_) => {}
                    }
                }
            }
            self.dup_strings(root, &[(pp.k("noProxy"), arr(px, "noProxy"))]);
        }
        if let Some(t) = ign.get("timeouts") {
            for k in ["httpResponseHeaders", "httpTotal"] {
                if int(t, k).is_some_and(|v| v < 0) {
                    self.warn(root, &p.k("timeouts").k(k), "negative timeout");
                }
            }
        }
    }
}
