//! SIGINT and SIGTERM become a flag: the signals are blocked in every thread and one
//! thread takes them with `sigwait`, so no handler runs in an arbitrary context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// The signal set {SIGINT, SIGTERM}.
fn shutdown_signals() -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; sigemptyset initialises it before any use, and
    // sigaddset only writes into it. Both only fail for an invalid signal number.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in this thread and in every thread it starts from now on.
/// Call it first in `main`, before any thread exists.
pub fn block() -> std::io::Result<()> {
    let set = shutdown_signals();
    // SAFETY: `set` is an initialised signal set and the old mask is not requested.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    match result {
        0 => Ok(()),
        error => Err(std::io::Error::from_raw_os_error(error)),
    }
}

/// Starts the thread that sets `stop` at the first SIGINT or SIGTERM.
pub fn watch(stop: Arc<AtomicBool>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = shutdown_signals();
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid place to write; the
            // signals are blocked in every thread, as sigwait requires.
            let result = unsafe { libc::sigwait(&set, &mut signal) };
            if result == 0 {
                eprintln!("tricommit-switch: signal {signal}: shutting down");
            }
            stop.store(true, Ordering::SeqCst);
        })
        .map(drop)
}
