use clap::Parser;
use kiln::cli::{Cli, Command};
use kiln::error::{InputError, Verdict, EXIT_USAGE};

fn main() {
    end_quietly_when_the_reader_goes_away();
    // libostree's grub2 backend runs kiln as its config generator (src/deploy/grub.rs);
    // set before any thread exists. A failure is reported by the write that needs it.
    let _ = kiln::deploy::grub::set_generator_env();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match kiln::deploy::grub::libostree_invocation(&args) {
        Some(a) => Cli::parse_from(a),
        None => Cli::parse(),
    };
    // Temp dirs are removed and child processes stopped on SIGINT/SIGTERM (exit 130/143).
    if let Err(e) = kiln::cleanup::install_signal_handlers() {
        eprintln!("kiln: warning: {e:#}");
    }
    let result = match cli.command {
        Command::Compose(a) => kiln::compose::cli::cmd_compose(a),
        Command::Recipe(c) => kiln::recipe::cli::cmd(c),
        Command::Log(a) => kiln::repo::cli::cmd_log(a),
        Command::Show(a) => kiln::repo::cli::cmd_show(a),
        Command::Deploy(a) => kiln::deploy::cli::cmd_deploy(a),
        Command::Rebase(a) => kiln::deploy::cli::cmd_rebase(a),
        Command::Status(a) => kiln::deploy::cli::cmd_status(a),
        Command::Upgrade(a) => kiln::deploy::cli::cmd_upgrade(a),
        Command::Rollback(a) => kiln::deploy::cli::cmd_rollback(a),
        Command::Pin(a) => kiln::deploy::cli::cmd_pin(a, true),
        Command::Unpin(a) => kiln::deploy::cli::cmd_pin(a, false),
        Command::Cleanup(a) => kiln::deploy::cli::cmd_cleanup(a),
        Command::Kargs(a) => kiln::deploy::cli::cmd_kargs(a),
        Command::Health(c) => kiln::deploy::cli::cmd_health(c),
        Command::Diff(a) => kiln::repo::cli::cmd_diff(a),
        Command::Publish(a) => kiln::publish::cli::cmd_publish(a),
        Command::Remote(c) => kiln::remote::cli::cmd(c),
        Command::Image(a) => kiln::image::cli::cmd_image(a),
        Command::Iso(c) => kiln::image::cli::cmd_iso(c),
        Command::Install(a) => kiln::install::cli::cmd_install(a),
        Command::Run(a) => kiln::qemu::cli::cmd_run(a),
        Command::Ignition(c) => kiln::ignition::cli::cmd(c),
        Command::Fleetlock(c) => kiln::fleetlock::cli::cmd(c),
        Command::FinalizeStaged => kiln::deploy::cli::cmd_finalize_staged(),
        Command::Grub2Generate(a) => kiln::deploy::cli::cmd_grub2_generate(a),
        Command::VerifyReproducible(a) => kiln::reproducible::cli::cmd_verify(a),
    };
    // An interrupted command ends with the signal thread's exit status, after its cleanup.
    kiln::cleanup::wait_if_interrupted();
    if let Err(e) = result {
        // A "no" answer (an update is available, the builds differ): its exit status and
        // nothing more; the command printed its own report.
        if let Some(v) = e.chain().find_map(|c| c.downcast_ref::<Verdict>()) {
            std::process::exit(v.code());
        }
        let code = if e.downcast_ref::<InputError>().is_some()
            || e.chain().any(|c| c.downcast_ref::<InputError>().is_some())
        {
            EXIT_USAGE
        } else {
            1
        };
        eprintln!("kiln: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(code);
    }
}

/// When the reader of kiln's output goes away (`kiln log | head -1`, `kiln show | true`),
/// kiln ends quietly, killed by SIGPIPE like cat or git (a shell reports status 141),
/// instead of panicking with "failed printing to stdout: Broken pipe".
///
/// SIGPIPE itself stays ignored, as the libraries kiln loads want it (gpgme sets it when
/// libostree creates its first `OstreeRepo`, GLib when the `GSocket` class is first
/// used): they write to pipes of their own and expect EPIPE there, and the programs gpgme
/// starts (gpg) inherit the disposition; with a handler they would start with the default
/// and die on a pipe gpgme closed early, leaving a verification without its result.
/// (Programs kiln starts through `cmd.rs` get the default back from the standard library.)
/// A write to a closed stdout or stderr then fails with EPIPE, `println!` panics, and a
/// panic hook turns exactly that panic into death by SIGPIPE, before anything is printed.
fn end_quietly_when_the_reader_goes_away() {
    // SAFETY: setting a signal disposition before any thread of kiln's own exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            // SAFETY: restoring the default action and raising the signal ends the
            // process at once, as a reader-less pipe does for any other tool.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info);
    }));
}
