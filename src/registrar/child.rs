//! The command `wayfinder register -- CMD ARGS` starts: in a process group
//! of its own, tied to the registrar's life, stopped as a group.
//!
//! What is guaranteed about the command (Linux):
//!
//! - It runs in a new process group (its PID is the group's id): a Ctrl-C at
//!   the terminal reaches only the registrar, which stops the command after
//!   draining.
//! - Every way the registrar ends on its own (a stop signal, the command's
//!   exit, a refused registration, an error, a panic that unwinds) signals
//!   the group: SIGTERM, then SIGKILL to what is still running after
//!   `--stop-timeout` (a command that exited by itself leaves its group a
//!   SIGTERM).
//! - When the registrar dies without running any code (SIGKILL, an abort, a
//!   `panic = "abort"` build), the kernel sends the command SIGKILL
//!   (`PR_SET_PDEATHSIG`, set by [`exec_child`] before the command is
//!   executed). This reaches the command itself, not processes it started:
//!   those stay in its process group (`kill -- -PGID` ends them).
//! - A process that leaves the group (`setsid`, `setpgid`, daemonising) is
//!   outside all of this.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

/// The hidden subcommand of `wayfinder` that runs [`exec_child`].
pub const EXEC_SUBCOMMAND: &str = "register-exec";

/// Longest wait for a process to go after SIGKILL.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// How often [`Child::stop`] looks whether the group is gone.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How a stop requested with [`Child::stop`] went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stopped {
    /// The command's exit status.
    pub status: ExitStatus,
    /// Whether it had exited before it was asked to stop.
    pub before: bool,
    /// Whether it had to be killed (SIGKILL after the stop timeout).
    pub forced: bool,
}

/// The running command. Dropping it before it was reaped SIGKILLs its
/// process group.
#[derive(Debug)]
pub(super) struct Child {
    child: tokio::process::Child,
    pid: Pid,
    status: Option<ExitStatus>,
    /// Its group was sent SIGTERM (once is enough: some programs take a
    /// second one as "quit now").
    terminated: bool,
}

impl Child {
    /// Starts `command` through `wayfinder register-exec` (see
    /// [`exec_child`]) in a new process group.
    ///
    /// `PR_SET_PDEATHSIG` fires when the *thread* that started the process
    /// ends: call this on a thread that lives as long as the registrar (the
    /// `main` thread running the runtime's `block_on`).
    pub fn spawn(command: &[String]) -> io::Result<Child> {
        let mut cmd = Command::new(self_exe()?);
        cmd.arg(EXEC_SUBCOMMAND)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--")
            .args(command)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("the started process has no PID"))?;
        Ok(Child {
            child,
            pid: Pid::from_raw(pid),
            status: None,
            terminated: false,
        })
    }

    /// Its PID (also its process group's id).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Whether it has been reaped.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Waits until it exits. Processes it leaves in its group are sent
    /// SIGTERM right away (unless the group already had one).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.status = Some(status);
        // While any member is left the group id cannot be reused, so this
        // reaches only what the command left behind.
        if !self.terminated && group_alive(self.pid) {
            self.terminated = true;
            let _ = killpg(self.pid, Signal::SIGTERM);
        }
        Ok(status)
    }

    /// Sends `sig` to its process group, if it still runs.
    pub fn signal_group(&self, sig: Signal) {
        if self.status.is_none() {
            if let Err(e) = killpg(self.pid, sig) {
                tracing::warn!(pgid = self.pid.as_raw(), signal = %sig, error = %e, "cannot signal the service");
            }
        }
    }

    /// Stops it: SIGTERM to its process group, then waits up to `timeout`
    /// for the command and everything in its group to exit; SIGKILL to
    /// whatever is left then.
    pub async fn stop(&mut self, timeout: Duration) -> io::Result<Stopped> {
        let before = self.status.is_some();
        if !before && !self.terminated {
            self.terminated = true;
            let _ = killpg(self.pid, Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let exited = tokio::time::timeout_at(deadline, async {
            let status = self.wait().await?;
            while group_alive(self.pid) {
                tokio::time::sleep(GROUP_POLL).await;
            }
            Ok::<_, io::Error>(status)
        })
        .await;
        let (status, forced) = match exited {
            Ok(status) => (status?, false),
            Err(_) => {
                let leader = self.status.is_none();
                tracing::warn!(
                    pgid = self.pid.as_raw(),
                    timeout = %humantime::format_duration(timeout),
                    "the service did not stop in time; killing its process group"
                );
                if group_alive(self.pid) || leader {
                    let _ = killpg(self.pid, Signal::SIGKILL);
                }
                let status = tokio::time::timeout(AFTER_SIGKILL, self.wait())
                    .await
                    .map_err(|_| io::Error::other("the service survived SIGKILL"))??;
                (status, leader)
            }
        };
        Ok(Stopped {
            status,
            before,
            forced,
        })
    }

    /// After the command exited by itself: waits up to `timeout` for what
    /// it left in its group (already sent SIGTERM), then SIGKILLs the rest.
    pub async fn reap_group(&mut self, timeout: Duration) {
        if self.status.is_none() || !group_alive(self.pid) {
            return;
        }
        let gone = tokio::time::timeout(timeout, async {
            while group_alive(self.pid) {
                tokio::time::sleep(GROUP_POLL).await;
            }
        })
        .await;
        if gone.is_err() && group_alive(self.pid) {
            tracing::warn!(
                pgid = self.pid.as_raw(),
                "processes the service left behind did not exit; killing them"
            );
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Not reaped: the leader (running or a zombie) holds the group id.
        if self.status.is_none() {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}

/// This executable, to start `wayfinder register-exec`.
fn self_exe() -> io::Result<std::path::PathBuf> {
    // /proc/self/exe still works when the file was replaced (an upgrade).
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && proc_exe.exists() {
        return Ok(proc_exe.to_owned());
    }
    std::env::current_exe()
}

/// Whether a live (not zombie) process is in process group `pgid`. Reads
/// `/proc`; elsewhere, whether the group exists at all.
fn group_alive(pgid: Pid) -> bool {
    match live_members(pgid.as_raw()) {
        Some(members) => !members.is_empty(),
        None => killpg(pgid, None).is_ok(),
    }
}

/// The PIDs of live (not zombie or dead) processes in process group `pgid`,
/// from `/proc`; `None` when `/proc` cannot be read.
pub fn live_members(pgid: i32) -> Option<Vec<i32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Gone since the listing: skip.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat) {
            if pgrp == pgid && !matches!(state, 'Z' | 'X' | 'x') {
                found.push(pid);
            }
        }
    }
    Some(found)
}

/// State and process group from a `/proc/PID/stat` line:
/// `pid (comm) state ppid pgrp ...` (`comm` may hold spaces and parens).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// `wayfinder register-exec --parent PID -- CMD ARGS`: what the registrar
/// starts, in its child process, to run its command. Asks the kernel to
/// SIGKILL this process when its parent dies (`PR_SET_PDEATHSIG`, kept
/// across `exec`), makes sure the parent is still the registrar (`parent`;
/// if it died meanwhile, nothing is started), then replaces itself with the
/// command (same PID, so the registrar's handle is the command's). Only
/// returns when that fails: the exit code to use (127 when the command is
/// not found, 126 otherwise), after saying why on stderr.
///
/// This is a separate step because setting `PR_SET_PDEATHSIG` between
/// `fork` and `exec` would need `pre_exec`, which is unsafe; here it is a
/// safe call in a process of our own.
pub fn exec_child(parent: u32, command: &[String]) -> u8 {
    use std::os::unix::process::CommandExt;

    let Some((program, args)) = command.split_first() else {
        eprintln!("wayfinder register: no command to start");
        return 127;
    };
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("wayfinder register: cannot tie {program:?} to the registrar's life: {e}");
        return 126;
    }
    if std::os::unix::process::parent_id() != parent {
        eprintln!("wayfinder register: the registrar is gone; not starting {program:?}");
        return 126;
    }
    // std's exec resets the signal mask and SIGPIPE (ignored by Rust
    // programs) as it does for every command it starts.
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("wayfinder register: cannot start {program:?}: {e}");
    if e.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_parsed_past_the_command_name() {
        assert_eq!(
            parse_stat("4242 (sh) S 4200 4242 4200 34816 ..."),
            Some(('S', 4242))
        );
        assert_eq!(
            parse_stat("77 (we ird) (name) Z 1 70 70 0"),
            Some(('Z', 70))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_a_live_member_of_its_group() {
        let me = std::process::id() as i32;
        let pgid = nix::unistd::getpgrp().as_raw();
        let members = live_members(pgid).expect("/proc readable");
        assert!(members.contains(&me), "{me} not in {members:?}");
    }
}
