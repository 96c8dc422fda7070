//! SIGTERM as a clean stop, as the control socket's `shutdown`: the machine stops, dumps in
//! flight are finished and committed, then the VMM exits.
//!
//! SIGTERM is blocked in every thread of the VMM ([`block`] on the first thread, before any
//! other starts: threads inherit the mask) and one thread takes it with `sigwait` ([`start`])
//! and tells the controller. A forked dump writer unblocks it again (`crash::fork`).

use crate::control::{ControlInput, Inbox};
use crate::error::VmmError;

/// The signal set holding SIGTERM.
fn sigterm_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGTERM in the calling thread and every thread it starts from now on.
pub fn block() {
    let set = sigterm_set();
    // SAFETY: changes the calling thread's signal mask only; `set` is initialised.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        tracing::warn!("cannot block SIGTERM (error {rc}); SIGTERM ends the VMM at once");
    }
}

/// Unblocks SIGTERM in the calling thread (async-signal-safe: for a forked child).
pub fn unblock() {
    let set = sigterm_set();
    // SAFETY: changes the calling thread's signal mask only; `set` is initialised.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Starts the thread that turns each SIGTERM into [`ControlInput::Terminate`]. It lives as long
/// as the process.
pub fn start(inbox: Inbox) -> Result<(), VmmError> {
    std::thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            let set = sigterm_set();
            loop {
                let mut signal = 0;
                // SAFETY: waits for a signal of `set`, which this thread blocks (inherited).
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc != 0 {
                    tracing::error!("cannot wait for SIGTERM (error {rc}); SIGTERM is ignored");
                    return;
                }
                inbox.post(ControlInput::Terminate);
            }
        })
        .map(drop)
        .map_err(|source| VmmError::Thread { what: "SIGTERM", source })
}
