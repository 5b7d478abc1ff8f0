//! The `kernel_arguments` section.

use super::{chk, opt_vec, R};
use crate::ignition::source::{KargsSrc, KeyPath};
use crate::validate::{kernel_arg, user_kernel_arg};
use ignition_config::v3_3 as ign;

pub(super) fn check(s: &KargsSrc, kk: &KeyPath) -> R<()> {
    for (i, k) in s.should_exist.iter().enumerate() {
        chk(&kk.k("should_exist").i(i), user_kernel_arg(k))?;
    }
    for (i, k) in s.should_not_exist.iter().enumerate() {
        chk(&kk.k("should_not_exist").i(i), kernel_arg(k))?;
    }
    Ok(())
}

pub(super) fn build(k: &KargsSrc) -> Option<ign::KernelArguments> {
    if k.should_exist.is_empty() && k.should_not_exist.is_empty() {
        return None;
    }
    Some(ign::KernelArguments {
        should_exist: opt_vec(k.should_exist.clone()),
        should_not_exist: opt_vec(k.should_not_exist.clone()),
    })
}
