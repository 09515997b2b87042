//! The operator's drains of any instance, whatever its source:
//! `PUT` / `DELETE /v1/services/{service}/instances/{addr}/drain`.

use std::net::SocketAddr;

use http::{Method, Response, StatusCode};

use super::params::percent_decode;
use super::respond::{method_not_allowed, text};
use super::Admin;
use crate::config::check_service_name;
use crate::proxy::ProxyBody;
use crate::registry::DrainError;

impl Admin {
    /// `PUT` / `DELETE /v1/services/{service}/instances/{addr}/drain`.
    pub(super) async fn operator_drain(
        &self,
        method: &Method,
        service: &str,
        addr: &str,
    ) -> Response<ProxyBody> {
        let drain = match *method {
            Method::PUT => true,
            Method::DELETE => false,
            _ => return method_not_allowed("PUT, DELETE"),
        };
        if let Err(e) = check_service_name(service) {
            return text(StatusCode::BAD_REQUEST, &format!("service: {e}\n"));
        }
        let decoded = percent_decode(addr);
        let Some(address) = decoded
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("address: {addr:?} is not IP:PORT (e.g. \"127.0.0.1:9001\")\n"),
            );
        };
        match self.registry.set_operator_drain(service, address, drain) {
            Ok(changed) => {
                if changed {
                    self.registrations.save();
                }
                // Answer once the snapshot routes accordingly, so nothing
                // new reaches a drained instance after the 200.
                self.settled().await;
                let what = if drain { "draining" } else { "drain cancelled" };
                text(StatusCode::OK, &format!("{what}\n"))
            }
            Err(e @ DrainError::UnknownInstance { .. }) => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
        }
    }
}
