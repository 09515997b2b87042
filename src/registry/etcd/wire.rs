//! The JSON shapes of etcd's v3 gateway, as far as wayfinder reads them.
//!
//! The gateway encodes keys and values in base64 and 64-bit integers as
//! strings, and leaves out fields that hold their default value (an event
//! without `type` is a PUT, a transaction without `succeeded` failed its
//! comparison): every field here has a default and accepts those forms.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A response header: the revision, and the cluster it comes from.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct ResponseHeader {
    #[serde(default, deserialize_with = "int64")]
    pub cluster_id: u64,
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

/// One key and its value.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(default, deserialize_with = "base64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "base64")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

/// `/v3/kv/range`.
#[derive(Debug, Deserialize)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

/// `/v3/kv/put`.
#[derive(Debug, Deserialize)]
pub(crate) struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

/// `/v3/kv/txn`, reduced to what deregistration reads.
#[derive(Debug, Deserialize)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<TxnOpResponse>,
}

/// One operation's answer inside a transaction.
#[derive(Debug, Deserialize)]
pub(crate) struct TxnOpResponse {
    pub response_delete_range: Option<DeleteRangeResponse>,
}

/// A delete's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct DeleteRangeResponse {
    #[serde(default)]
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
#[allow(non_snake_case)]
pub(crate) struct LeaseGrantResponse {
    #[serde(default, deserialize_with = "int64")]
    pub ID: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Deserialize)]
#[allow(non_snake_case)]
pub(crate) struct LeaseKeepAlive {
    #[serde(default, deserialize_with = "int64")]
    pub TTL: i64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuthenticateResponse {
    #[serde(default)]
    pub token: String,
}

/// One message of a streamed answer: a result or an error.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamMessage<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamError {
    #[serde(default)]
    pub grpc_code: i64,
    #[serde(default)]
    pub message: String,
}

/// The error body of a failed unary call.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// One watch response.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WatchResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One change.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Event {
    /// `PUT` is the default and so is left out by the gateway.
    #[serde(rename = "type", default)]
    pub kind: EventKind,
    #[serde(default)]
    pub kv: KeyValue,
}

/// What an event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum EventKind {
    /// Created or updated.
    #[default]
    #[serde(rename = "PUT")]
    Put,
    /// Deleted (explicitly or by lease expiry).
    #[serde(rename = "DELETE")]
    Delete,
}

/// A 64-bit integer the gateway may send as a string.
fn int64<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: std::str::FromStr + Deserialize<'de>,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int<T> {
        N(T),
        S(String),
    }
    match Int::<T>::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(de::Error::custom),
    }
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(de::Error::custom)
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the key range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: the range runs to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/w/"), b"/w0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn gateway_json_decodes() {
        let text = r#"{"result":{"header":{"cluster_id":"14841639068965178418","revision":"4","raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3cvc2VydmljZXMvYS8x","mod_revision":"4"}},{"kv":{"key":"L3cvZA==","create_revision":"4","mod_revision":"4","version":"1","value":"e30=","lease":"7"}}]}}"#;
        let msg: StreamMessage<WatchResponse> = serde_json::from_str(text).unwrap();
        let r = msg.result.unwrap();
        assert_eq!(r.header.revision, 4);
        assert_eq!(r.header.cluster_id, 14_841_639_068_965_178_418);
        assert_eq!(r.events[0].kind, EventKind::Delete);
        assert_eq!(r.events[0].kv.key, b"/w/services/a/1");
        assert_eq!(r.events[1].kind, EventKind::Put);
        assert_eq!(r.events[1].kv.lease, 7);
        assert_eq!(r.events[1].kv.value, b"{}");
        let canceled =
            r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#;
        let msg: StreamMessage<WatchResponse> = serde_json::from_str(canceled).unwrap();
        assert_eq!(msg.result.unwrap().compact_revision, 4);
    }
}
