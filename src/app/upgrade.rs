//! Hot restart without a second command line, for service managers:
//! SIGUSR2 makes a proxy that listens on a hand-over socket start its
//! successor itself (the binary at the path it was started from, which a
//! package upgrade replaced, with the same arguments plus `--takeover`),
//! and [`ready`] tells systemd (`Type=notify`, `NotifyAccess=all`) which
//! process is the service's main one once it serves, so the successor
//! becomes it (`READY=1` and `MAINPID=`, per sd_notify(3)).

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Tells systemd this process serves and is the service's main process,
/// when it was started with `NOTIFY_SOCKET` (otherwise nothing).
pub(crate) fn ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(e) = notify(&socket, msg.as_bytes()) {
        tracing::warn!(socket = ?socket, error = %e, "cannot notify systemd");
    }
}

/// Sends `msg` to the sd_notify socket `socket` (a path, or `@name` for
/// an abstract one).
fn notify(socket: &OsString, msg: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg, &addr)?;
        }
        None => {
            sock.send_to(msg, Path::new(socket))?;
        }
    }
    Ok(())
}

/// Listens for SIGUSR2 from now on (before [`ready`]: a SIGUSR2 right
/// after must not find the default action, which ends the process), and
/// starts a successor on each, taking over from `socket` (without one,
/// logs that it cannot); the future never ends.
pub(crate) fn on_sigusr2(socket: Option<PathBuf>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let usr2 = signal(SignalKind::user_defined2());
    async move {
        let Ok(mut usr2) = usr2 else {
            return std::future::pending().await;
        };
        sigusr2_loop(&mut usr2, socket).await;
    }
}

async fn sigusr2_loop(usr2: &mut tokio::signal::unix::Signal, socket: Option<PathBuf>) {
    while usr2.recv().await.is_some() {
        let Some(socket) = &socket else {
            tracing::warn!("SIGUSR2: ignored; a hot restart needs --handoff-socket");
            continue;
        };
        match spawn_successor(socket) {
            Ok(pid) => tracing::info!(
                successor_pid = pid,
                "SIGUSR2: started a successor to take over"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGUSR2: cannot start a successor; still serving")
            }
        }
    }
    std::future::pending().await
}

/// Starts this binary again with this process's arguments, `--takeover
/// socket` instead of any earlier one; a thread reaps it if it exits
/// while this process still runs (a failed start).
fn spawn_successor(socket: &Path) -> io::Result<u32> {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let mut cmd = Command::new(program(&argv0)?);
    cmd.args(successor_args(args, socket)).stdin(Stdio::null());
    let mut child = cmd.spawn()?;
    let pid = child.id();
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            if !status.success() {
                tracing::error!(successor_pid = pid, %status, "the successor exited; still serving");
            }
        }
    });
    Ok(pid)
}

/// The binary to start: the path this one was started as (a package
/// upgrade replaces the file there), else this executable's.
fn program(argv0: &OsString) -> io::Result<PathBuf> {
    if argv0.as_encoded_bytes().contains(&b'/') {
        return Ok(PathBuf::from(argv0));
    }
    let exe = std::env::current_exe()?;
    // A replaced binary reads as "PATH (deleted)" in /proc/self/exe.
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// `args` without `--takeover X` / `--takeover=X`, then `--takeover
/// socket`.
fn successor_args(args: impl Iterator<Item = OsString>, socket: &Path) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a == "--takeover" {
            skip = true;
            continue;
        }
        if a.as_encoded_bytes().starts_with(b"--takeover=") {
            continue;
        }
        out.push(a);
    }
    out.push("--takeover".into());
    out.push(socket.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_gets_the_same_arguments_and_one_takeover() {
        let args = [
            "--log-format",
            "journald",
            "run",
            "--takeover",
            "/old.sock",
            "-c",
            "w.toml",
            "--takeover=/x",
            "--handoff-socket",
            "/h.sock",
        ]
        .map(OsString::from);
        let got = successor_args(args.into_iter(), Path::new("/h.sock"));
        let want = [
            "--log-format",
            "journald",
            "run",
            "-c",
            "w.toml",
            "--handoff-socket",
            "/h.sock",
            "--takeover",
            "/h.sock",
        ]
        .map(OsString::from);
        assert_eq!(got, want);
    }

    #[test]
    fn ready_reaches_a_notify_socket() {
        let dir = std::env::temp_dir().join(format!("wf-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        notify(&path.clone().into_os_string(), b"READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
