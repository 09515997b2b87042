//! `wayfinder register --docker`: third-party registration of every
//! container on a Docker host that opts in by its labels (Registrator's
//! pattern). Owns the registrar's view of the containers and of the
//! registrations it holds, and keeps the proxy's admin API in line with
//! them.
//!
//! - Containers: [`labels`] reads what a container asks for, [`engine`]
//!   talks to the Engine API (bollard).
//! - On connecting (at start and after every reconnect) it subscribes to
//!   container events (from a moment before, so nothing falls between),
//!   lists the running containers and reconciles: registers what is
//!   missing, and deletes its own registrations (ids starting with
//!   `docker:REGISTRAR-ID:`) that no running container asks for. Others'
//!   registrations are never touched. The same reconcile runs every
//!   [`RESYNC`] and on SIGHUP.
//! - Events: `start` registers; `die`, `stop`, `destroy`, `pause`, an
//!   `unhealthy` health status deregister; `unpause` and `healthy` register
//!   again. `kill` with SIGKILL deregisters at once. `kill` with the
//!   container's stop signal (what `docker stop` sends first) drains: the
//!   registrations are marked draining, so the proxy sends no new requests
//!   while the ones in flight finish, and are deleted at `die`. A container
//!   that is still running `--drain-timeout` after that signal is taken
//!   back (drain cancelled).
//! - Every third of the TTL it pings the engine, then heartbeats what it
//!   holds (and runs `wayfinder.check` paths). While the engine does not
//!   answer it heartbeats nothing and deletes nothing: the registrations
//!   stay until their TTL, and a reconcile follows when the engine is back.
//! - Stopping (SIGTERM, SIGINT, SIGQUIT) leaves the registrations to their
//!   TTL, so a registrar restarted within it takes them over without a gap.

pub mod engine;
pub mod labels;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use http::{Method, StatusCode, Uri};
use tokio::time::Instant;

use super::client::{Answer, Client};
use super::{check_target, retryable, Check, Failure, Refusal, RegistrarError, Sig, Signals};
use engine::{Endpoint, Engine, Event};
use labels::{Container, Mode, Want};

/// Longest wait for one admin API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A full reconcile runs this often, besides after each reconnect.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Reconnect backoff bounds.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// `wayfinder register --docker` options (flattened into `register`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct DockerArgs {
    /// Register every running container that opts in by its labels
    /// (wayfinder.service=NAME, or Registrator's SERVICE_NAME...), following
    /// the Docker host's events, instead of one --service at --address.
    #[arg(
        long,
        conflicts_with_all = ["service", "address", "id", "check", "check_tcp", "tags", "command"]
    )]
    pub docker: bool,
    /// The Docker Engine API: unix:///PATH, a socket path, or tcp://HOST:PORT
    /// (plain HTTP).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock",
        value_name = "URL"
    )]
    pub docker_host: String,
    /// The host IP to register published ports with (external mode, the
    /// default); without it, a port must be published on a specific IP.
    #[arg(long, requires = "docker", value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Internal mode: register the containers' IPs on this Docker network
    /// with their own (exposed) ports, instead of published host ports.
    #[arg(
        long,
        requires = "docker",
        conflicts_with = "advertise_ip",
        value_name = "NAME"
    )]
    pub docker_network: Option<String>,
    /// Only containers with this label (KEY or KEY=VALUE; repeatable: all
    /// must match).
    #[arg(long, requires = "docker", value_name = "LABEL")]
    pub docker_label: Vec<String>,
    /// Names this registrar in its registration ids,
    /// docker:REGISTRAR-ID:CONTAINER:PORT (default: the Docker host's name).
    /// Registrars sharing a proxy need different ones.
    #[arg(long, requires = "docker", value_name = "NAME", value_parser = parse_registrar_id)]
    pub registrar_id: Option<String>,
}

fn parse_registrar_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: use 1-64 letters, digits, '-', '_' or '.'"))
    }
}

/// A host name as a registrar id: characters ids may not hold become `-`.
fn registrar_id_of(host: &str) -> String {
    let id: String = host
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "docker".to_owned()
    } else {
        id
    }
}

/// What `--docker` runs with.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The proxy's admin API.
    pub registry: Uri,
    /// Bearer token for it.
    pub token: Option<String>,
    /// TTL of the registrations; heartbeats every third of it.
    pub ttl: Duration,
    /// How long a container may run on after its stop signal before its
    /// drain is cancelled.
    pub drain_timeout: Duration,
    /// The Engine API.
    pub endpoint: Endpoint,
    /// Addressing.
    pub mode: Mode,
    /// Only containers with these labels.
    pub labels: Vec<String>,
    /// The registrar's id (default: the engine's host name).
    pub registrar_id: Option<String>,
}

impl DockerOptions {
    /// From `register`'s arguments.
    pub fn new(
        args: DockerArgs,
        registry: Uri,
        token: Option<String>,
        ttl: Duration,
        drain_timeout: Duration,
    ) -> Result<DockerOptions, String> {
        // Read here, not by clap: a DOCKER_HOST meant for another tool
        // must not break `register` without --docker.
        let endpoint =
            Endpoint::parse(&args.docker_host).map_err(|e| format!("--docker-host: {e}"))?;
        let mode = match args.docker_network {
            Some(network) => Mode::Internal { network },
            None => Mode::External {
                advertise_ip: args.advertise_ip,
            },
        };
        Ok(DockerOptions {
            registry,
            token,
            ttl,
            drain_timeout,
            endpoint,
            mode,
            labels: args.docker_label,
            registrar_id: args.registrar_id,
        })
    }
}

/// Runs until a stop signal (exit code 0) or a refusal that retrying
/// cannot change (401, 403, or a `--registry` that is not an admin API).
pub async fn run(opts: DockerOptions) -> Result<i32, RegistrarError> {
    let mut signals = Signals::new().map_err(RegistrarError::Signals)?;
    let mut r = Registrar::new(opts);
    tracing::info!(
        docker = %r.opts.endpoint,
        registry = %r.opts.registry,
        mode = %mode_text(&r.opts.mode),
        "watching Docker"
    );
    match r.run(&mut signals).await {
        Ok(signal) => {
            tracing::info!(
                %signal,
                registrations = r.held.len(),
                "stopping; the registrations stay until their TTL (a registrar started within it takes them over)"
            );
            Ok(0)
        }
        Err(refusal) => Err(refusal.into()),
    }
}

fn mode_text(mode: &Mode) -> String {
    match mode {
        Mode::External {
            advertise_ip: Some(ip),
        } => format!("published ports on {ip}"),
        Mode::External { advertise_ip: None } => "published ports on their bound IPs".into(),
        Mode::Internal { network } => format!("container IPs on network {network}"),
    }
}

/// A container the registrar follows.
#[derive(Debug)]
struct Tracked {
    container: Container,
    /// What its labels ask for.
    wants: Vec<Want>,
    /// Its label problems, as last logged.
    problems: Vec<String>,
    /// Its stop signal was seen then: draining until it dies.
    stopping: Option<Instant>,
    /// SIGKILL was seen: deregistered until it starts again.
    killed: bool,
}

/// A registration the registrar holds.
#[derive(Debug, Clone)]
struct Held {
    want: Want,
    /// The container's full id.
    container: String,
    draining: bool,
}

/// How a reconcile or an event ended early.
enum Stop {
    /// The engine stopped answering.
    Engine(String),
    /// A refusal retrying cannot change.
    Refused(Box<Refusal>),
}

/// The registrar's state.
struct Registrar {
    opts: DockerOptions,
    admin: Client,
    /// `docker:REGISTRAR-ID:` once the engine was reached.
    prefix: Option<String>,
    engine: Option<Engine>,
    containers: HashMap<String, Tracked>,
    held: BTreeMap<String, Held>,
    /// Registrations whose last call failed and that are wanted: kept by
    /// a reconcile, tried again at the next round.
    pending: BTreeSet<String>,
    /// Wants the proxy refused (400): not retried until they change.
    refused: HashMap<String, Want>,
    /// `wayfinder.check` results by registration id, as last logged.
    checks: HashMap<String, bool>,
    /// Registry calls are failing (logged once each way).
    registry_failing: bool,
}

impl Registrar {
    fn new(opts: DockerOptions) -> Registrar {
        Registrar {
            admin: Client::new(opts.registry.clone(), opts.token.clone()),
            opts,
            prefix: None,
            engine: None,
            containers: HashMap::new(),
            held: BTreeMap::new(),
            pending: BTreeSet::new(),
            refused: HashMap::new(),
            checks: HashMap::new(),
            registry_failing: false,
        }
    }

    /// The main loop; returns the stop signal's name.
    async fn run(&mut self, signals: &mut Signals) -> Result<&'static str, Refusal> {
        let interval = (self.opts.ttl / 3).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        let mut backoff = Duration::ZERO;
        let mut away_since: Option<Instant> = None;
        loop {
            // Connect (again) when there is no event stream.
            let mut events = loop {
                match self.connect().await {
                    Ok(events) => {
                        if let Some(since) = away_since.take() {
                            tracing::info!(
                                after = %humantime::format_duration(round_ms(since.elapsed())),
                                "Docker answers again; reconciled"
                            );
                        }
                        backoff = Duration::ZERO;
                        break events;
                    }
                    Err(Stop::Refused(r)) => return Err(*r),
                    Err(Stop::Engine(error)) => {
                        self.engine = None;
                        if away_since.is_none() {
                            away_since = Some(Instant::now());
                            tracing::warn!(
                                %error,
                                held = self.held.len(),
                                "Docker does not answer; keeping the registrations until their TTL and retrying"
                            );
                        } else {
                            tracing::debug!(%error, "Docker still does not answer");
                        }
                        backoff = (backoff * 2).clamp(BACKOFF.0, BACKOFF.1);
                        let sleep = tokio::time::sleep(backoff);
                        tokio::pin!(sleep);
                        loop {
                            tokio::select! {
                                sig = signals.recv() => match sig {
                                    Sig::Stop(name) => return Ok(name),
                                    Sig::Hup => tracing::info!("SIGHUP: reconciling once Docker answers"),
                                },
                                () = &mut sleep => break,
                            }
                        }
                    }
                }
            };
            // Follow the events until the stream ends.
            let lost = loop {
                use futures_util::StreamExt;
                let result = tokio::select! {
                    sig = signals.recv() => match sig {
                        Sig::Stop(name) => return Ok(name),
                        Sig::Hup => {
                            tracing::info!("SIGHUP: reconciling");
                            self.reconcile().await
                        }
                    },
                    _ = tick.tick() => self.round().await,
                    _ = resync.tick() => self.reconcile().await,
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => self.on_event(ev).await,
                        Some(Err(e)) => Err(Stop::Engine(format!("event stream: {e}"))),
                        None => Err(Stop::Engine("the event stream ended".to_owned())),
                    },
                };
                match result {
                    Ok(()) => {}
                    Err(Stop::Refused(r)) => return Err(*r),
                    Err(Stop::Engine(e)) => break e,
                }
            };
            self.engine = None;
            away_since = Some(Instant::now());
            tracing::warn!(
                error = %lost,
                held = self.held.len(),
                "lost Docker; keeping the registrations until their TTL and reconnecting"
            );
        }
    }

    /// Connects, subscribes to events and reconciles.
    async fn connect(
        &mut self,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Event, String>>, Stop> {
        let engine = Engine::connect(&self.opts.endpoint, &self.opts.labels)
            .await
            .map_err(Stop::Engine)?;
        if self.prefix.is_none() {
            let id = match &self.opts.registrar_id {
                Some(id) => id.clone(),
                None => registrar_id_of(&engine.host_name().await.map_err(Stop::Engine)?),
            };
            let prefix = format!("docker:{id}:");
            tracing::info!(%prefix, "registration ids");
            self.prefix = Some(prefix);
        }
        // From a moment back: what happens while listing is not missed
        // (events seen twice are harmless: each re-reads its container).
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(1));
        let events = engine.events(&format!("{}.{:09}", since.as_secs(), since.subsec_nanos()));
        self.engine = Some(engine);
        self.reconcile().await?;
        Ok(events)
    }

    fn engine(&self) -> Result<&Engine, Stop> {
        self.engine
            .as_ref()
            .ok_or_else(|| Stop::Engine("not connected".to_owned()))
    }

    fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("docker:?:")
    }

    /// Lists the running containers, syncs each, forgets the rest, and
    /// deletes this registrar's registrations nothing asks for.
    async fn reconcile(&mut self) -> Result<(), Stop> {
        let running = self.engine()?.running().await.map_err(Stop::Engine)?;
        let running: BTreeSet<String> = running.into_iter().collect();
        for id in &running {
            self.refresh(id).await?;
        }
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|id| !running.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.refresh(&id).await?;
        }
        // Heartbeat (or register) everything, then delete leftovers.
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.sync(&id, true).await?;
        }
        self.delete_leftovers().await?;
        Ok(())
    }

    /// Deletes this registrar's registrations in the proxy that it neither
    /// holds nor is trying to make.
    async fn delete_leftovers(&mut self) -> Result<(), Stop> {
        let answer = match self
            .admin
            .call(Method::GET, "/v1/registry", None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => a,
            Ok(a) => {
                self.failed(self.failure("list", "*", "*", &a))?;
                return Ok(());
            }
            Err(e) => {
                self.failed(Failure::Retry(format!("list: {e}")))?;
                return Ok(());
            }
        };
        let own = own_registrations(&answer.body, self.prefix());
        for (service, id) in own {
            let keep = self
                .held
                .get(&id)
                .is_some_and(|h| h.want.service == service)
                || self.pending.contains(&id);
            if !keep {
                tracing::info!(%service, %id, "deleting a registration no running container asks for");
                self.delete(&service, &id).await?;
            }
        }
        Ok(())
    }

    /// Reads a container again and syncs its registrations.
    async fn refresh(&mut self, id: &str) -> Result<(), Stop> {
        let container = self.engine()?.inspect(id).await.map_err(Stop::Engine)?;
        let holds = self.held.values().any(|h| h.container == id);
        match container {
            Some(c) if c.opts_in() || holds => {
                let plan = labels::plan(&c, &self.opts.mode, self.prefix());
                let t = self
                    .containers
                    .entry(id.to_owned())
                    .or_insert_with(|| Tracked {
                        container: c.clone(),
                        wants: Vec::new(),
                        problems: Vec::new(),
                        stopping: None,
                        killed: false,
                    });
                // A stopped container has no ports: nothing to say then.
                if c.running && plan.problems != t.problems && !plan.problems.is_empty() {
                    for problem in &plan.problems {
                        tracing::warn!(container = %c.name, %problem, "label not used");
                    }
                }
                t.problems = plan.problems;
                t.wants = plan.wants;
                t.container = c;
                self.sync(id, false).await
            }
            _ => {
                // Gone, or never opted in.
                if self.containers.contains_key(id) || holds {
                    if let Some(t) = self.containers.get_mut(id) {
                        t.container.running = false;
                    }
                    self.sync(id, false).await?;
                }
                self.containers.remove(id);
                Ok(())
            }
        }
    }

    /// Brings the registrations of container `id` in line with what it
    /// asks for; `heartbeat`: also renew those that stay.
    async fn sync(&mut self, id: &str, heartbeat: bool) -> Result<(), Stop> {
        let Some(t) = self.containers.get(id) else {
            return Ok(());
        };
        let name = t.container.name.clone();
        let (running, killed, stopping) = (t.container.running, t.killed, t.stopping);
        let held_here: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.container == id)
            .map(|(k, _)| k.clone())
            .collect();
        if !running || killed {
            for rid in held_here {
                self.deregister(&rid, &name, "stopped").await?;
            }
            let short = format!("{}{}:", self.prefix(), &id[..id.len().min(12)]);
            self.pending.retain(|p| !p.starts_with(&short));
            return Ok(());
        }
        if let Some(since) = stopping {
            if since.elapsed() < self.opts.drain_timeout {
                if heartbeat {
                    for rid in held_here {
                        self.heartbeat(&rid).await?;
                    }
                }
                return Ok(());
            }
            tracing::warn!(container = %name, timeout = %humantime::format_duration(self.opts.drain_timeout), "still running after its stop signal and the drain timeout; taking it back");
            for rid in &held_here {
                self.undrain(rid).await?;
            }
            if let Some(t) = self.containers.get_mut(id) {
                t.stopping = None;
            }
        }
        let t = &self.containers[id];
        let (serving, paused, health) = (
            t.container.serving(),
            t.container.paused,
            t.container.health,
        );
        let wants = if serving { t.wants.clone() } else { Vec::new() };
        let mut keep = BTreeSet::new();
        for want in wants {
            if self.refused.get(&want.id) == Some(&want) {
                continue;
            }
            if let Some(path) = &want.check {
                if !self.check(&want, path, &name).await {
                    continue;
                }
            }
            keep.insert(want.id.clone());
            match self.held.get(&want.id) {
                Some(h) if h.want == want => {
                    if heartbeat {
                        self.heartbeat(&want.id).await?;
                    }
                }
                Some(h) => {
                    if h.want.service != want.service {
                        let old = h.want.service.clone();
                        self.delete(&old, &want.id).await?;
                    }
                    self.register(&want, id, &name).await?;
                }
                None => self.register(&want, id, &name).await?,
            }
        }
        let why = if paused {
            "paused"
        } else if matches!(health, Some(labels::Health::Unhealthy)) {
            "unhealthy"
        } else if !serving {
            "not healthy yet"
        } else {
            "no longer asked for"
        };
        for rid in held_here {
            if !keep.contains(&rid) {
                let why = if self.checks.get(&rid) == Some(&false) {
                    "its check fails"
                } else {
                    why
                };
                self.deregister(&rid, &name, why).await?;
            }
        }
        Ok(())
    }

    /// Runs a `wayfinder.check`; logs each change once.
    async fn check(&mut self, want: &Want, path: &str, name: &str) -> bool {
        let url: Option<Uri> = format!("http://{}{path}", want.address).parse().ok();
        let result = match url {
            Some(url) => check_target(&Check::Http(url), want.address, self.opts.ttl).await,
            None => Err(format!("{path} is not a usable path")),
        };
        let ok = result.is_ok();
        if self.checks.insert(want.id.clone(), ok) != Some(ok) {
            match result {
                Ok(()) => {
                    tracing::info!(container = %name, service = %want.service, id = %want.id, "check passing")
                }
                Err(reason) => {
                    tracing::warn!(container = %name, service = %want.service, id = %want.id, %reason, "check failing; not registered while it fails")
                }
            }
        }
        ok
    }

    /// Heartbeats (and syncs) every container.
    async fn round(&mut self) -> Result<(), Stop> {
        self.engine()?.ping().await.map_err(Stop::Engine)?;
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.sync(&id, true).await?;
        }
        // Held registrations whose container is no longer followed.
        let orphans: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| !self.containers.contains_key(&h.container))
            .map(|(k, _)| k.clone())
            .collect();
        for rid in orphans {
            self.deregister(&rid, "?", "gone").await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), Stop> {
        tracing::debug!(id = %ev.id, action = %ev.action, signal = ?ev.signal, "event");
        match ev.action.as_str() {
            "kill" => {
                let Some(t) = self.containers.get_mut(&ev.id) else {
                    return Ok(());
                };
                let stop = t
                    .container
                    .stop_signal
                    .as_deref()
                    .map_or(Some(15), engine::signal_number);
                let name = t.container.name.clone();
                if ev.signal == Some(9) {
                    t.killed = true;
                    self.sync(&ev.id, false).await
                } else if ev.signal.is_some() && ev.signal == stop && t.stopping.is_none() {
                    t.stopping = Some(Instant::now());
                    let rids: Vec<String> = self
                        .held
                        .iter()
                        .filter(|(_, h)| h.container == ev.id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for rid in rids {
                        self.drain(&rid, &name).await?;
                    }
                    Ok(())
                } else {
                    Ok(())
                }
            }
            "start" | "restart" => {
                if let Some(t) = self.containers.get_mut(&ev.id) {
                    t.stopping = None;
                    t.killed = false;
                }
                self.refresh(&ev.id).await
            }
            _ => self.refresh(&ev.id).await,
        }
    }

    // === admin API calls ===

    fn path(service: &str, id: &str) -> String {
        format!("/v1/registry/{service}/{id}")
    }

    fn refusal(&self, call: &'static str, service: &str, id: &str, answer: &Answer) -> Refusal {
        let hint = match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                " (check --token or WAYFINDER_TOKEN)"
            }
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                " (is --registry the proxy's admin API?)"
            }
            s if s.is_redirection() => " (is --registry the proxy's admin API?)",
            _ => "",
        };
        Refusal {
            registry: self.opts.registry.clone(),
            call,
            service: service.to_owned(),
            id: id.to_owned(),
            status: answer.status,
            body: answer.text(),
            hint,
        }
    }

    fn failure(&self, call: &'static str, service: &str, id: &str, answer: &Answer) -> Failure {
        if retryable(answer.status) {
            Failure::Retry(format!(
                "{call} {service}/{id}: {}: {}",
                answer.status,
                answer.text()
            ))
        } else {
            Failure::Refused(self.refusal(call, service, id, answer))
        }
    }

    /// A call failed: retryable ones are logged (once while they keep
    /// failing); refusals that concern the whole registrar end it.
    fn failed(&mut self, f: Failure) -> Result<(), Stop> {
        match f {
            Failure::Retry(error) => {
                if !self.registry_failing {
                    self.registry_failing = true;
                    tracing::warn!(%error, "registry call failed; retrying at the next round");
                } else {
                    tracing::debug!(%error, "registry call failed again");
                }
                Ok(())
            }
            Failure::Refused(r) => Err(Stop::Refused(Box::new(r))),
        }
    }

    fn succeeded(&mut self) {
        if self.registry_failing {
            self.registry_failing = false;
            tracing::info!("registry calls succeed again");
        }
    }

    async fn register(&mut self, want: &Want, container: &str, name: &str) -> Result<(), Stop> {
        let mut body = serde_json::json!({
            "address": want.address.to_string(),
            "ttl": humantime::format_duration(self.opts.ttl).to_string(),
            "tags": want.tags,
        });
        if let Some(w) = want.weight {
            body["weight"] = w.into();
        }
        let path = Registrar::path(&want.service, &want.id);
        let answer = self
            .admin
            .call(Method::PUT, &path, Some(body.to_string()), CALL_TIMEOUT)
            .await;
        match answer {
            Ok(a) if matches!(a.status, StatusCode::OK | StatusCode::CREATED) => {
                self.succeeded();
                self.pending.remove(&want.id);
                self.refused.remove(&want.id);
                let again = self.held.contains_key(&want.id);
                self.held.insert(
                    want.id.clone(),
                    Held {
                        want: want.clone(),
                        container: container.to_owned(),
                        draining: false,
                    },
                );
                if a.status == StatusCode::CREATED || !again {
                    tracing::info!(container = %name, service = %want.service, id = %want.id, address = %want.address, "registered");
                }
                Ok(())
            }
            Ok(a) if a.status == StatusCode::BAD_REQUEST => {
                // This registration only: not retried until it changes.
                self.succeeded();
                self.pending.remove(&want.id);
                tracing::warn!(container = %name, "{}", self.refusal("register", &want.service, &want.id, &a));
                self.refused.insert(want.id.clone(), want.clone());
                Ok(())
            }
            Ok(a) => {
                self.pending.insert(want.id.clone());
                let f = self.failure("register", &want.service, &want.id, &a);
                self.failed(f)
            }
            Err(e) => {
                self.pending.insert(want.id.clone());
                self.failed(Failure::Retry(format!(
                    "register {}/{}: {e}",
                    want.service, want.id
                )))
            }
        }
    }

    async fn heartbeat(&mut self, rid: &str) -> Result<(), Stop> {
        let Some(h) = self.held.get(rid).cloned() else {
            return Ok(());
        };
        let path = format!("{}/heartbeat", Registrar::path(&h.want.service, rid));
        match self
            .admin
            .call(Method::PUT, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {
                self.succeeded();
                Ok(())
            }
            Ok(a) if a.status == StatusCode::NOT_FOUND => {
                self.succeeded();
                tracing::warn!(service = %h.want.service, id = %rid, "the registry forgot the registration (expired, or the proxy restarted); registering again");
                self.held.remove(rid);
                let name = self
                    .containers
                    .get(&h.container)
                    .map_or_else(String::new, |t| t.container.name.clone());
                self.register(&h.want, &h.container, &name).await?;
                if h.draining {
                    self.drain(rid, &name).await?;
                }
                Ok(())
            }
            Ok(a) => {
                let f = self.failure("heartbeat", &h.want.service, rid, &a);
                self.failed(f)
            }
            Err(e) => self.failed(Failure::Retry(format!(
                "heartbeat {}/{rid}: {e}",
                h.want.service
            ))),
        }
    }

    async fn drain(&mut self, rid: &str, name: &str) -> Result<(), Stop> {
        let Some(h) = self.held.get(rid).cloned() else {
            return Ok(());
        };
        let path = format!("{}/drain", Registrar::path(&h.want.service, rid));
        match self
            .admin
            .call(Method::PUT, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK => {
                self.succeeded();
                tracing::info!(container = %name, service = %h.want.service, id = %rid, "draining: the container got its stop signal");
                if let Some(h) = self.held.get_mut(rid) {
                    h.draining = true;
                }
                Ok(())
            }
            Ok(a) => {
                let f = self.failure("drain", &h.want.service, rid, &a);
                self.failed(f)
            }
            Err(e) => self.failed(Failure::Retry(format!(
                "drain {}/{rid}: {e}",
                h.want.service
            ))),
        }
    }

    async fn undrain(&mut self, rid: &str) -> Result<(), Stop> {
        let Some(h) = self.held.get(rid).cloned() else {
            return Ok(());
        };
        let path = format!("{}/drain", Registrar::path(&h.want.service, rid));
        match self
            .admin
            .call(Method::DELETE, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status.is_success() || a.status == StatusCode::NOT_FOUND => {
                self.succeeded();
                if let Some(h) = self.held.get_mut(rid) {
                    h.draining = false;
                }
                Ok(())
            }
            Ok(a) => {
                let f = self.failure("cancel the drain of", &h.want.service, rid, &a);
                self.failed(f)
            }
            Err(e) => self.failed(Failure::Retry(format!(
                "undrain {}/{rid}: {e}",
                h.want.service
            ))),
        }
    }

    /// Deregisters a held registration.
    async fn deregister(&mut self, rid: &str, name: &str, why: &str) -> Result<(), Stop> {
        let Some(h) = self.held.get(rid).cloned() else {
            return Ok(());
        };
        if self.delete(&h.want.service, rid).await? {
            tracing::info!(container = %name, service = %h.want.service, id = %rid, reason = %why, "deregistered");
            self.held.remove(rid);
            self.checks.remove(rid);
        }
        Ok(())
    }

    /// `DELETE`; `Ok(true)` once it is gone (200 or 404).
    async fn delete(&mut self, service: &str, id: &str) -> Result<bool, Stop> {
        let path = Registrar::path(service, id);
        match self
            .admin
            .call(Method::DELETE, &path, None, CALL_TIMEOUT)
            .await
        {
            Ok(a) if a.status == StatusCode::OK || a.status == StatusCode::NOT_FOUND => {
                self.succeeded();
                Ok(true)
            }
            Ok(a) => {
                let f = self.failure("deregister", service, id, &a);
                self.failed(f).map(|()| false)
            }
            Err(e) => self
                .failed(Failure::Retry(format!("deregister {service}/{id}: {e}")))
                .map(|()| false),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// (service, id) of the registrations in a `GET /v1/registry` answer whose
/// id starts with `prefix` (registrations: not the config's or DNS's).
fn own_registrations(body: &[u8], prefix: &str) -> Vec<(String, String)> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in doc["services"].as_array().into_iter().flatten() {
        let Some(service) = s["service"].as_str() else {
            continue;
        };
        for i in s["instances"].as_array().into_iter().flatten() {
            let source = i["source"].as_str().unwrap_or("");
            if source == "config" || source.starts_with("dns") {
                continue;
            }
            if let Some(id) = i["id"].as_str().filter(|id| id.starts_with(prefix)) {
                out.push((service.to_owned(), id.to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_registrations_are_those_with_the_prefix() {
        let body = br#"{"index":3,"services":[
            {"service":"web","index":2,"instances":[
                {"id":"docker:h1:0123456789ab:80","address":"127.0.0.1:1","source":"api"},
                {"id":"docker:h2:0123456789ab:80","address":"127.0.0.1:2","source":"api"},
                {"id":"manual","address":"127.0.0.1:3","source":"api"},
                {"id":null,"address":"127.0.0.1:4","source":"config"}]},
            {"service":"api","index":1,"instances":[
                {"id":"docker:h1:fedcba987654:8080","address":"127.0.0.1:5","source":"etcd"}]}]}"#;
        assert_eq!(
            own_registrations(body, "docker:h1:"),
            [
                ("web".to_owned(), "docker:h1:0123456789ab:80".to_owned()),
                ("api".to_owned(), "docker:h1:fedcba987654:8080".to_owned()),
            ]
        );
        assert!(own_registrations(b"nope", "docker:h1:").is_empty());
    }

    #[test]
    fn registrar_ids_from_host_names() {
        assert_eq!(
            registrar_id_of("build-7.example.com"),
            "build-7.example.com"
        );
        assert_eq!(registrar_id_of("my host/1"), "my-host-1");
        assert_eq!(registrar_id_of(""), "docker");
        assert!(parse_registrar_id("ci-1").is_ok());
        assert!(parse_registrar_id("a:b").is_err());
        assert!(parse_registrar_id("").is_err());
    }
}
