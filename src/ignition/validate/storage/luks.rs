//! `storage.luks` (spec 3.2 on): LUKS volumes, their Clevis bindings and key files.

use super::path_error;
use crate::ignition::json::Node;
use crate::ignition::validate::resource::url_scheme;
use crate::ignition::validate::{arr, boolean, int, is_null, non_empty, st, Validator, P};

impl Validator<'_> {
    pub(super) fn luks(&mut self, root: &Node, l: &Node, p: &P) {
        let name = st(l, "name").unwrap_or("");
        if name.is_empty() {
            self.warn(
                root,
                &p.k("name"),
                "luks name is empty: Ignition cannot open the volume",
            );
        }
        if name.contains('/') {
            self.err(root, &p.k("name"), "device names cannot contain slashes");
        }
        if st(l, "label").is_some_and(|x| x.len() > 47) {
            self.err(
                root,
                &p.k("label"),
                "luks device labels cannot be longer than 47 characters",
            );
        }
        match st(l, "device").filter(|x| !x.is_empty()) {
            None => self.err(root, &p.k("device"), "disk device is required"),
            Some(d) => {
                if let Some(e) = path_error(d) {
                    self.err(root, &p.k("device"), e);
                }
            }
        }
        if let Some(c) = l.get("clevis") {
            let pc = p.k("clevis");
            let custom = c.get("custom").filter(|x| !is_null(x));
            let pin = custom.and_then(|x| st(x, "pin"));
            // Spec 3.2 counted any custom object; 3.3 only a custom pin.
            let custom_set = if self.minor >= 3 {
                non_empty(pin)
            } else {
                custom.is_some()
            };
            if custom_set
                && (!arr(c, "tang").is_empty()
                    || boolean(c, "tpm2") == Some(true)
                    || int(c, "threshold").is_some_and(|t| t != 0))
            {
                self.err(
                    root,
                    &pc,
                    "cannot use custom clevis config with tpm2, tang, or threshold",
                );
            }
            if let Some(cu) = custom {
                let config = st(cu, "config");
                let needs_network = self.minor >= 3 && boolean(cu, "needsNetwork") == Some(true);
                if non_empty(pin) || non_empty(config) || needs_network {
                    match pin.unwrap_or("") {
                        "tpm2" | "tang" | "sss" => {}
                        "" if self.minor >= 3 => self.err(
                            root,
                            &pc.k("custom").k("pin"),
                            "missing required custom clevis pin",
                        ),
                        _ => self.err(root, &pc.k("custom").k("pin"), "unsupported clevis pin"),
                    }
                    if !non_empty(config) {
                        self.err(
                            root,
                            &pc.k("custom").k("config"),
                            "missing required custom clevis config",
                        );
                    }
                }
            }
            let tangs = arr(c, "tang");
            for (i, t) in tangs.iter().enumerate() {
                let pt = pc.k("tang").i(i);
                match url_scheme(st(t, "url").unwrap_or("")) {
                    Err(e) => self.err(root, &pt.k("url"), e),
                    Ok(s) if s != "http" && s != "https" => {
                        self.err(root, &pt.k("url"), "invalid url scheme: tang needs http(s)")
                    }
                    Ok(_) => {}
                }
                if !non_empty(st(t, "thumbprint")) {
                    self.err(root, &pt.k("thumbprint"), "thumbprint is required");
                }
            }
            self.dups(root, &[(pc.k("tang"), tangs)], |n| {
                st(n, "url").unwrap_or("").to_string()
            });
        }
        if let Some(k) = l.get("keyFile") {
            if let Some(src) = st(k, "source").filter(|s| !s.is_empty()) {
                let before = self.diags.len();
                self.url(root, src, &p.k("keyFile").k("source"));
                if self.diags.len() > before {
                    self.diags.truncate(before);
                    self.err(root, &p.k("keyFile").k("source"), "invalid key-file source");
                }
            }
            self.resource(root, k, &p.k("keyFile"), false);
        }
    }
}
