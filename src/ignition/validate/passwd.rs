//! The `passwd` section: users and groups.

use super::{arr, non_empty, st, Validator, P};
use crate::ignition::json::Node;

impl Validator<'_> {
    pub(super) fn passwd(&mut self, root: &Node, pw: &Node, pp: &P) {
        let users = arr(pw, "users");
        for (i, u) in users.iter().enumerate() {
            let pu = pp.k("users").i(i);
            if !non_empty(st(u, "name")) {
                self.warn(
                    root,
                    &pu.k("name"),
                    "user name is empty: Ignition accepts the config but cannot create the user",
                );
            }
            self.dup_strings(root, &[(pu.k("groups"), arr(u, "groups"))]);
            self.dup_strings(
                root,
                &[(pu.k("sshAuthorizedKeys"), arr(u, "sshAuthorizedKeys"))],
            );
        }
        self.dups(root, &[(pp.k("users"), users)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });
        let groups = arr(pw, "groups");
        for (i, g) in groups.iter().enumerate() {
            if !non_empty(st(g, "name")) {
                self.warn(
                    root,
                    &pp.k("groups").i(i).k("name"),
                    "group name is empty: Ignition accepts the config but cannot create the group",
                );
            }
        }
        self.dups(root, &[(pp.k("groups"), groups)], |n| {
            st(n, "name").unwrap_or("").to_string()
        });
    }
}
