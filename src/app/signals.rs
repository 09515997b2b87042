//! The signals the process answers: SIGTERM and SIGINT stop it (a second
//! one during the shutdown forces the exit), SIGHUP reloads the config.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Completes on SIGTERM or SIGINT (never, if neither can be listened for).
/// Listening starts at the first poll.
pub async fn shutdown_signal() {
    next_stop_signal().await;
}

/// Completes on the next SIGTERM or SIGINT (never, if neither can be
/// listened for). Listening starts when this is called.
pub(super) fn next_stop_signal() -> impl Future<Output = ()> {
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}

/// SIGHUPs, when asked for and they can be listened for.
pub(super) struct Hangups(Option<Signal>);

impl Hangups {
    /// Listens for SIGHUP from now on when `on`.
    pub(super) fn new(on: bool) -> Hangups {
        Hangups(if on {
            signal(SignalKind::hangup()).ok()
        } else {
            None
        })
    }

    /// Completes on the next SIGHUP (never, when not listening).
    pub(super) async fn next(&mut self) {
        match self.0.as_mut() {
            Some(h) => {
                if h.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}
