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
//! then leave the fleet (an explicit removal) and exit 0.

use std::sync::Arc;
use std::time::Duration;

use super::{check, CheckChange, CheckLog, Options, RegistrarError, Sig, Signals};
use crate::config::GossipSettings;
use crate::registry::gossip::{Gossip, PublishedInstance, Role};

/// Runs the agent until a stop signal; the exit code.
pub async fn run(opts: Options, settings: GossipSettings) -> Result<i32, RegistrarError> {
    let mut signals = Signals::new().map_err(RegistrarError::Signals)?;
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
    let stop = loop {
        let checked = check(&opts).await;
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
        tokio::select! {
            sig = signals.recv() => if let Sig::Stop(name) = sig { break name },
            () = tokio::time::sleep(interval) => {}
        }
    };
    tracing::info!(signal = stop, drain = ?opts.drain_timeout, "stopping: draining, then leaving the fleet");
    if published {
        let draining = PublishedInstance {
            draining: true,
            ..instance
        };
        gossip.publish(vec![draining], Vec::new()).await;
        tokio::select! {
            () = tokio::time::sleep(opts.drain_timeout) => {}
            sig = signals.recv() => if let Sig::Stop(name) = sig {
                tracing::warn!(signal = name, "stop signal again: not waiting any longer");
            },
        }
    }
    gossip.leave().await;
    tracing::info!("left the gossip fleet");
    Ok(0)
}
