//! Reloading the config file: a valid new file applies what a reload can
//! (routes, services, policies, static instances, DNS tables, the pre-stop
//! delay); the settings read only at start ([`Config::startup`]) keep
//! their values and are named as waiting for a restart; an invalid file
//! changes nothing and is reported. The reloader watches the file and
//! SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{signals, Running};
use crate::config::{Config, ConfigError};
use crate::registry::{static_instances, Removals, STATIC_SOURCE};

/// The settings read only at start ([`Config::startup`]): the keys that
/// differ between `old` and `new`, and `new` with them kept at their `old`
/// values (what is in effect until a restart).
fn restart_only(old: &Config, new: &Config) -> (Vec<String>, Config) {
    let changed = old.startup.changed_keys(&new.startup);
    let effective = Config {
        startup: old.startup.clone(),
        ..new.clone()
    };
    (changed, effective)
}

impl Running {
    /// Reloads the config file at `path` (`current` is the last config
    /// applied) and applies routes, services, policies, static instances
    /// and the pre-stop delay. An invalid file changes nothing; its error
    /// is returned, logged, shown by `GET /v1/status` and as the `config`
    /// source's error in `GET /v1/sources`. Settings read only at start
    /// are listed in the log line and in `GET /v1/status`.
    pub fn reload(&self, path: &Path, current: &mut Config) -> Result<bool, ConfigError> {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                self.state.record_rejected(path.to_owned(), e.to_string());
                self.registry
                    .source_failed(STATIC_SOURCE, format!("rejected reload: {e}"));
                self.reload_failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        };
        if new == *current {
            self.state.record_unchanged(path.to_owned());
            self.clear_reload_error(current);
            return Ok(false);
        }
        let (changed, _) = restart_only(current, &new);
        let (pending, effective) = restart_only(&self.started, &new);
        self.registry.apply_config(&effective);
        self.dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&self.registry, &effective);
        self.clear_reload_error(&effective);
        if changed.is_empty() {
            tracing::info!(file = %path.display(), routes = new.routes.len(), services = new.services.len(), "config reloaded");
        } else {
            tracing::warn!(
                file = %path.display(),
                routes = new.routes.len(),
                services = new.services.len(),
                restart_needed = %changed.join(", "),
                "config reloaded; changed settings that apply only at the next restart: {}",
                changed.join(", ")
            );
        }
        self.state
            .record_applied(path.to_owned(), effective, changed, pending);
        *current = new;
        Ok(true)
    }

    /// Reads every TLS listener's certificate files again (SIGHUP); a bad
    /// file is logged and that listener keeps its certificates.
    pub(crate) fn reload_certificates(&self) {
        for store in &self.cert_stores {
            match store.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificates not reloaded; the running ones stay")
                }
            }
        }
    }

    /// After a valid reload: the `config` source no longer shows the error
    /// of an earlier rejected one.
    fn clear_reload_error(&self, config: &Config) {
        if self.reload_failed.swap(false, Ordering::Relaxed) {
            self.registry
                .report(STATIC_SOURCE, static_instances(config), Removals::Explicit);
        }
    }

    /// Watches `path` (checked every second) and, with `sighup`, SIGHUP;
    /// reloads on change. Runs until the process ends.
    pub(crate) fn spawn_reloader(
        self: &Arc<Self>,
        path: PathBuf,
        mut current: Config,
        sighup: bool,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let stamp = |p: &Path| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            };
            let mut last = stamp(&path);
            let mut hup = signals::Hangups::new(sighup);
            loop {
                let by_signal = tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => false,
                    () = hup.next() => true,
                };
                let now = stamp(&path);
                if !by_signal && now == last {
                    continue;
                }
                last = now;
                let Some(running) = me.upgrade() else { return };
                if by_signal {
                    running.reload_certificates();
                }
                let _ = running.reload(&path, &mut current);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::start_from;

    /// A config file in the temp directory, removed on drop.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(name: &str, text: &str) -> TempConfig {
            let path =
                std::env::temp_dir().join(format!("wayfinder-{name}-{}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempConfig(path)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Every setting read only at start is named when a reload changes it
    /// and keeps its value until a restart, while the rest applies: the
    /// whole startup part is compared (before, a hand-kept list missed
    /// `proxy.trusted_proxies`, `[http2]` and others, and a reload showed
    /// their new values as in effect).
    #[tokio::test]
    async fn reload_names_changed_startup_settings_and_keeps_them() {
        let base = "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n";
        let file = TempConfig::new("app-reload-startup", base);
        let mut current = Config::load(&file.0).unwrap();
        let running = start_from(&current, Some(&file.0), None).await.unwrap();
        std::fs::write(
            &file.0,
            format!(
                "{base}[timeouts]\nconnect = \"1s\"\n\
                 [proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[http2]\nidle_timeout = \"5s\"\n"
            ),
        )
        .unwrap();
        assert!(running.reload(&file.0, &mut current).unwrap());
        assert_eq!(
            running.state.restart_needed(),
            ["proxy.trusted_proxies", "http2.idle_timeout"]
        );
        let effective = serde_json::to_value(&*running.state.config()).unwrap();
        assert_eq!(effective["proxy"]["trusted_proxies"], serde_json::json!([]));
        assert_eq!(effective["http2"]["idle_timeout"], "1m");
        assert_eq!(
            effective["timeouts"]["connect"], "1s",
            "reloadable: applied"
        );
        running.shutdown().await;
    }
}
