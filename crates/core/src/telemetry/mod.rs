//! Metrics, audit lines, logging, and the health/readiness/metrics endpoint.

pub mod audit;
pub mod http;
pub mod logging;
pub mod metrics;

pub use metrics::Metrics;
