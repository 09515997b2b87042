//! Health: decides which instances may take traffic.
//!
//! - [`passive`]: outlier detection from real traffic. Consecutive failures
//!   eject an instance for a time that doubles with each consecutive
//!   ejection (capped); a cap on the share of a service's instances ejected
//!   at once keeps one bad signal from emptying a service.
//! - [`success_rate`]: outlier detection by comparison: an instance whose
//!   success rate stands well below its peers' is ejected too.
//! - [`latency`]: the same for latency: an instance whose p99 stands well
//!   above the median of its peers' is ejected.
//! - [`active`]: periodic HTTP or TCP checks per instance, run by background
//!   tasks that a supervisor starts and stops as snapshots change; an
//!   instance changes state only after `healthy_threshold` passes or
//!   `unhealthy_threshold` failures in a row.
//!
//! - [`panic`]: the panic-mode rule (too few instances available: ignore
//!   health), applied by the registry on every rebuild and by both of the
//!   above on every transition.
//!
//! Both feed the per-instance live state the balancer reads.

pub mod active;
pub mod latency;
pub mod panic;
pub mod passive;
pub mod success_rate;

pub use active::spawn_supervisor;
