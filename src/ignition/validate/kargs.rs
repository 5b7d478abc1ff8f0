//! The `kernelArguments` section (spec 3.3).

use super::{arr, Validator, P};
use crate::ignition::json::Node;

impl Validator<'_> {
    pub(super) fn kernel_arguments(&mut self, root: &Node, k: &Node, pk: &P) {
        self.dup_strings(
            root,
            &[
                (pk.k("shouldExist"), arr(k, "shouldExist")),
                (pk.k("shouldNotExist"), arr(k, "shouldNotExist")),
            ],
        );
    }
}
