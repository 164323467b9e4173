//! The Istio CA gRPC service: authentication, impersonation, response
//! shaping, error mapping, rate limits, TLS and the server loop.

pub mod client_cert;
pub mod coalesce;
pub mod connection;
pub mod error;
pub mod quick_ack;
pub mod rate_limit;
pub mod server;
pub mod service;
pub mod static_tokens;
pub mod tls;
pub mod token_file;
pub mod unary_body;

#[cfg(test)]
mod service_tests;
