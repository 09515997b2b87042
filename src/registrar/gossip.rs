//! `wayfinder register --gossip`: a registrar agent that is itself a
//! member of the gossip fleet. Instead of calling a proxy's admin API it
//! publishes its instance as its own gossiped state; every proxy of the
//! fleet routes to it, and a proxy going away changes nothing for it.
//!
//! Every third of the TTL it checks the service: passing, the instance is
//! published; failing, it is withdrawn (named `gone`: an explicit removal
//! everywhere). If the agent dies (SIGKILL, a crashed host), the fleet's
//! failure detector declares it dead and every proxy removes the instance
//! implicitly, under the self-preservation guard. SIGTERM, SIGINT or
//! SIGQUIT: publish the instance draining, wait `--drain-timeout` for the
//! proxies to stop sending it new requests and finish those in flight,
//! then leave the fleet (an explicit removal), stop the command if it
//! wraps one, and exit 0.
//!
//! Wrapping a command (`-- CMD ARGS`) works as without `--gossip` (see
//! [`super::child`]): started first, in a process group of its own, and
//! stopped after leaving; when it exits by itself the agent leaves at once
//! (its instance goes everywhere, explicitly) and exits with its code.

use std::sync::Arc;
use std::time::Duration;

use super::{check, exit_code, CheckChange, CheckLog, Ending, Options, RegistrarError, Supervisor};
use crate::config::GossipSettings;
use crate::registry::gossip::{Gossip, PublishedInstance, Role};

/// Runs the agent until a stop signal or the command's exit; the exit
/// code (as without `--gossip`, see [`super::run`]).
pub async fn run(opts: Options, settings: GossipSettings) -> Result<i32, RegistrarError> {
    let mut sup = Supervisor::start(&opts)?;
    // A failure to join drops `sup`, and with it the command's group.
    let gossip = Gossip::start(&settings, Role::Agent, None)
        .await
        .map_err(|e| RegistrarError::Gossip(e.to_string()))?;
    let instance = PublishedInstance {
        service: Arc::from(opts.service.as_str()),
        id: Some(Arc::from(opts.id.as_str())),
        address: opts.address,
        weight: 1,
        tags: opts.tags.clone(),
        draining: false,
    };
    let key = (instance.service.clone(), instance.address);
    let interval = (opts.ttl / 3).max(Duration::from_millis(50));
    let mut log = CheckLog::default();
    let mut published = false;
    let ending = loop {
        let checked = match sup.until(check(&opts)).await {
            Ok(c) => c,
            Err(ending) => break ending,
        };
        if let Some(change) = log.observe(&checked) {
            match change {
                CheckChange::Passing { .. } => {
                    tracing::info!(service = %opts.service, id = %opts.id, "check passing; published to the fleet")
                }
                CheckChange::Failing { reason, .. } => {
                    tracing::warn!(service = %opts.service, id = %opts.id, %reason, "check failing; withdrawn from the fleet")
                }
            }
        }
        match (checked.is_ok(), published) {
            (true, false) => {
                gossip.publish(vec![instance.clone()], Vec::new()).await;
                published = true;
            }
            (false, true) => {
                gossip.publish(Vec::new(), vec![key.clone()]).await;
                published = false;
            }
            _ => {}
        }
        if let Err(ending) = sup.until(tokio::time::sleep(interval)).await {
            break ending;
        }
    };
    match ending {
        Ending::Stop(signal) => {
            tracing::info!(signal, drain = ?opts.drain_timeout, "stopping: draining, then leaving the fleet");
            if published {
                let draining = PublishedInstance {
                    draining: true,
                    ..instance
                };
                gossip.publish(vec![draining], Vec::new()).await;
                sup.unless_stopped_again(tokio::time::sleep(opts.drain_timeout))
                    .await;
            }
            gossip.leave().await;
            tracing::info!("left the gossip fleet");
            let Some(child) = sup.child.as_mut() else {
                return Ok(0);
            };
            let stopped = child
                .stop(opts.stop_timeout)
                .await
                .map_err(RegistrarError::Wait)?;
            let code = exit_code(true, stopped.status);
            if code == 0 {
                tracing::info!(status = %stopped.status, "the service stopped");
            } else {
                tracing::warn!(status = %stopped.status, forced = stopped.forced, "the service did not stop cleanly");
            }
            Ok(code)
        }
        Ending::Exited(status) => {
            tracing::warn!(%status, "the service exited; leaving the fleet");
            gossip.leave().await;
            // The same stop signal can reach it and us at once (systemd
            // signals the whole control group): then it was a stop.
            let asked = sup.stop_pending().await;
            if let Some(child) = sup.child.as_mut() {
                child.reap_group(opts.stop_timeout).await;
            }
            Ok(exit_code(asked, status))
        }
        Ending::WaitFailed(e) => {
            gossip.leave().await;
            // Dropping the child SIGKILLs its group.
            sup.child = None;
            Err(RegistrarError::Wait(e))
        }
        // Nothing is refused here: no registry calls.
        Ending::Refused(refusal) => {
            gossip.leave().await;
            Err(refusal.into())
        }
    }
}
