//! QEMU: boot an image (TCG when KVM is unusable), serial console capture, wait for
//! markers. Used by `kiln run` and by the e2e tests (a small kola-like harness).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::qemu::{Vm, VmOptions};
//! use std::time::Duration;
//! let mut vm = Vm::start(VmOptions::new("build/base.qcow2", "bios-smoke"))?;
//! vm.wait_for("KILN-BOOTED", Duration::from_secs(300))?;
//! vm.login(Duration::from_secs(120))?;
//! let out = vm.run_ok("systemctl is-system-running --wait", Duration::from_secs(120))?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! The console is a unix socket QEMU serves; a reader thread appends everything to an
//! in-memory buffer and to a log file. On failure (a panicking test or [`Vm::keep_log`])
//! the whole log is copied to the artifacts directory as `NAME.log`. QEMU is killed when
//! the [`Vm`] is dropped.

//!
//! Files: [`accel`] (KVM or TCG, default vCPUs), [`options`] (how to boot: [`VmOptions`],
//! QEMU's command line), [`optstr`] (paths and values in option strings), [`vm`] (the
//! running [`Vm`] and its console), [`snapshot`] (save a running VM, resume it), [`console`]
//! (console text), [`tpm`] (a swtpm TPM 2.0 per VM), [`cli`] (`kiln run`).

pub mod accel;
pub mod cli;
pub mod console;
pub mod options;
pub mod optstr;
pub mod snapshot;
pub mod tpm;
pub mod vm;

pub use accel::{accel, default_cpus, Accel};
pub use console::{console_tail, strip_ansi, strip_kernel_messages};
pub use options::{
    image_format, qemu_args, Disk, VmOptions, OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS, OVMF_VARS_MS,
};
pub use optstr::{opt_path, opt_value};
pub use tpm::{Swtpm, TpmState};
pub use vm::Vm;
