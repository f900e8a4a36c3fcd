//! systemd's readiness protocol (`Type=notify`): a datagram to the socket named by
//! `NOTIFY_SOCKET`. Without that variable (not started by systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`) to the service manager, if one asked
/// for it. A failure is logged, never fatal: the node serves either way.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::warn!("telling systemd {state:?} through NOTIFY_SOCKET failed: {e}");
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sender = UnixDatagram::unbound()?;
    let path = socket.as_bytes();
    // A leading '@' names a socket in Linux's abstract namespace.
    if let Some(name) = path.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other(
                "abstract sockets exist only on Linux",
            ));
        }
    }
    sender.send_to(state.as_bytes(), socket)?;
    Ok(())
}
