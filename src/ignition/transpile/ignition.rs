//! The `ignition` section: config merge/replace, timeouts, TLS certificate authorities,
//! proxy.

use super::resource::{chk_resource, resource, resources};
use super::{chk, opt_vec, terr, Ctx, R};
use crate::ignition::source::{IgnitionSrc, KeyPath};
use ignition_config::v3_3 as ign;

pub(super) fn check(s: &IgnitionSrc, ki: &KeyPath) -> R<()> {
    if let Some(c) = &s.config {
        for (i, r) in c.merge.iter().enumerate() {
            chk_resource(r, &ki.k("config").k("merge").i(i))?;
        }
        if let Some(r) = &c.replace {
            chk_resource(r, &ki.k("config").k("replace"))?;
        }
    }
    if let Some(t) = &s.timeouts {
        for (v, k) in [
            (t.http_response_headers, "http_response_headers"),
            (t.http_total, "http_total"),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(terr(
                    &ki.k("timeouts").k(k),
                    "a timeout cannot be negative (0 means the default)",
                ));
            }
        }
    }
    if let Some(tls) = s.security.as_ref().and_then(|x| x.tls.as_ref()) {
        for (i, r) in tls.certificate_authorities.iter().enumerate() {
            chk_resource(
                r,
                &ki.k("security").k("tls").k("certificate_authorities").i(i),
            )?;
        }
    }
    if let Some(p) = &s.proxy {
        let kp = ki.k("proxy");
        for (v, k) in [
            (&p.http_proxy, "http_proxy"),
            (&p.https_proxy, "https_proxy"),
        ] {
            if let Some(u) = v {
                chk(
                    &kp.k(k),
                    crate::validate::url(u, crate::validate::Schemes::Http),
                )?;
            }
        }
    }
    Ok(())
}

/// Fills `out` (which holds the spec version) from the source.
pub(super) fn build(ctx: &Ctx, s: &IgnitionSrc, ki: &KeyPath, out: &mut ign::Ignition) -> R<()> {
    if let Some(c) = &s.config {
        let kc = ki.k("config");
        let mut ic = ign::IgnitionConfig::default();
        let merge = resources(ctx, &c.merge, &kc.k("merge"), false)?;
        ic.merge = opt_vec(merge);
        if let Some(r) = &c.replace {
            ic.replace = Some(resource(ctx, r, &kc.k("replace"), false)?);
        }
        out.config = Some(ic);
    }
    if let Some(t) = &s.timeouts {
        out.timeouts = Some(ign::Timeouts {
            http_response_headers: t.http_response_headers,
            http_total: t.http_total,
        });
    }
    if let Some(tls) = s.security.as_ref().and_then(|x| x.tls.as_ref()) {
        let kt = ki.k("security").k("tls").k("certificate_authorities");
        let cas = resources(ctx, &tls.certificate_authorities, &kt, false)?;
        out.security = Some(ign::Security {
            tls: Some(ign::SecurityTls {
                certificate_authorities: opt_vec(cas),
            }),
        });
    }
    if let Some(p) = &s.proxy {
        out.proxy = Some(ign::Proxy {
            http_proxy: p.http_proxy.clone(),
            https_proxy: p.https_proxy.clone(),
            no_proxy: opt_vec(p.no_proxy.iter().cloned().map(Some).collect()),
        });
    }
    Ok(())
}
