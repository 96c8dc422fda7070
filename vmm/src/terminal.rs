//! Raw mode for an interactive console: the guest, not the host tty, echoes and edits lines.

use vmm_sys_util::terminal::Terminal;

/// Puts stdin in raw mode while alive, if stdin is a terminal.
pub struct RawMode(bool);

impl RawMode {
    /// Enables raw mode when stdin is a tty; otherwise does nothing.
    pub fn enable_if_tty() -> Self {
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the file descriptor.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        Self(tty && stdin.lock().set_raw_mode().is_ok())
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
