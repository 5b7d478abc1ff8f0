use clap::Parser;
use kiln::cli::{Cli, Command};
use kiln::error::{InputError, EXIT_USAGE};

fn main() {
    end_quietly_when_the_reader_goes_away();
    let cli = Cli::parse();
    // Temp dirs are removed and child processes stopped on SIGINT/SIGTERM (exit 130/143).
    if let Err(e) = kiln::cleanup::install_signal_handlers() {
        eprintln!("kiln: warning: {e:#}");
    }
    let result = match cli.command {
        Command::Compose(a) => kiln::compose::cli::cmd_compose(a),
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
        Command::Publish(a) => kiln::publish::cli::cmd_publish(a),
        Command::Remote(c) => kiln::remote::cmd(c),
        Command::Image(a) => kiln::image::cmd_image(a),
        Command::Iso(c) => kiln::image::iso::cmd(c),
        Command::Install(a) => kiln::install::cmd_install(a),
        Command::Run(a) => kiln::qemu::cli::cmd_run(a),
        Command::Ignition(c) => kiln::ignition::cli::cmd(c),
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

/// When the reader of kiln's output goes away (`kiln log | head -1`, `kiln show | true`),
/// kiln ends quietly, killed by SIGPIPE like cat or git (a shell reports status 141),
/// instead of panicking with "failed printing to stdout: Broken pipe".
///
/// Setting SIGPIPE back to its default at startup is not enough: libraries kiln loads set
/// it to "ignore" on first use, because they write to pipes and sockets of their own and
/// want EPIPE there: gpgme when libostree creates its first `OstreeRepo`, GLib when the
/// `GSocket` class is first used. After that every write to a closed stdout returned
/// EPIPE, and `println!` panics on it. So this runs those one-time initializers first
/// (they never touch SIGPIPE again), then installs a handler: a SIGPIPE while stdout or
/// stderr is a pipe or socket without a reader ends the process with the default
/// action; any other SIGPIPE (a library's own pipe) is ignored, so that write gets the
/// EPIPE the library expects.
fn end_quietly_when_the_reader_goes_away() {
    use ostree::glib::prelude::StaticType;
    use ostree::glib::translate::IntoGlib;
    // gpgme's initialization (SIGPIPE -> SIG_IGN) runs in OstreeRepo's instance init.
    let _ = ostree::Repo::new(&ostree::gio::File::for_path("/"));
    // SAFETY: referencing a registered GObject class runs its class_init once; the class
    // stays alive for the life of the process.
    unsafe {
        ostree::glib::gobject_ffi::g_type_class_ref(ostree::gio::Socket::static_type().into_glib());
    }
    // SAFETY: a zeroed sigaction with a handler that only calls async-signal-safe
    // functions (poll, signal, raise), installed before any thread of kiln's own exists.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGPIPE, &sa, std::ptr::null_mut());
    }
}

extern "C" fn on_sigpipe(_: libc::c_int) {
    let mut fds = [
        libc::pollfd {
            fd: 1,
            events: 0,
            revents: 0,
        },
        libc::pollfd {
            fd: 2,
            events: 0,
            revents: 0,
        },
    ];
    // SAFETY: poll, signal and raise are async-signal-safe; fds is a valid array.
    unsafe {
        if libc::poll(fds.as_mut_ptr(), 2, 0) > 0
            && fds
                .iter()
                .any(|p| p.revents & (libc::POLLERR | libc::POLLHUP) != 0)
        {
            // Pending until the handler returns, then the default action: exit by SIGPIPE.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
}
