use clap::Parser;
use kiln::cli::{Cli, Command};
use kiln::error::{InputError, EXIT_USAGE};

fn main() {
    // Behave like other command-line tools when the reader goes away (`kiln log | head`):
    // end quietly instead of panicking on a broken pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Temp dirs are removed and child processes stopped on SIGINT/SIGTERM (exit 130/143).
    if let Err(e) = kiln::cleanup::install_signal_handlers() {
        eprintln!("kiln: warning: {e:#}");
    }
    let result = match cli.command {
        Command::Compose(a) => kiln::compose::cmd_compose(a),
        Command::Recipe(c) => kiln::recipe::cli::cmd(c),
        Command::Log(a) => kiln::compose::cmd_log(a),
        Command::Show(a) => kiln::compose::cmd_show(a),
        Command::Deploy(a) => kiln::deploy::cli::cmd_deploy(a),
        Command::Status(a) => kiln::deploy::cli::cmd_status(a),
        Command::Upgrade(a) => kiln::deploy::cli::cmd_upgrade(a),
        Command::Rollback(a) => kiln::deploy::cli::cmd_rollback(a),
        Command::Pin(a) => kiln::deploy::cli::cmd_pin(a, true),
        Command::Unpin(a) => kiln::deploy::cli::cmd_pin(a, false),
        Command::Cleanup(a) => kiln::deploy::cli::cmd_cleanup(a),
        Command::Kargs(a) => kiln::deploy::cli::cmd_kargs(a),
        Command::Diff(a) => kiln::deploy::cli::cmd_diff(a),
        Command::Publish(a) => kiln::publish::cmd_publish(a),
        Command::Remote(c) => kiln::remote::cmd(c),
        Command::Image(a) => kiln::image::cmd_image(a),
        Command::Iso(c) => kiln::image::iso::cmd(c),
        Command::Install(a) => kiln::install::cmd_install(a),
        Command::Run(a) => kiln::qemu::cmd_run(a),
        Command::Ignition(c) => kiln::ignition::cmd(c),
        Command::VerifyReproducible(a) => kiln::reproducible::cmd_verify(a),
    };
    // An interrupted command ends with the signal thread's exit status, after its cleanup.
    kiln::cleanup::wait_if_interrupted();
    if let Err(e) = result {
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
