//! The rate-limit flags `dev` and `serve` share.

use crate::ca::rate_limit::{self, Limit, RateLimits};

/// CreateCertificate rate limits: `RATE/s,burst=N`, or `off`. The defaults
/// are `RateLimits::default()` (a test holds them equal).
#[derive(clap::Args)]
// No argument group: every command's flag struct is named `Args`, and clap
// names a group after its struct.
#[group(skip)]
pub struct Args {
    /// Per identity certified (all pods of one service account).
    #[arg(long, env = "MESHROOT_IDENTITY_RATE_LIMIT", default_value = "50/s,burst=1000", value_parser = rate_limit::parse_limit)]
    identity_rate_limit: Limit,
    /// Per node the caller runs on and its namespace (when its token names the node).
    #[arg(long, env = "MESHROOT_NODE_RATE_LIMIT", default_value = "100/s,burst=1000", value_parser = rate_limit::parse_limit)]
    node_rate_limit: Limit,
    /// Per peer IP address, checked before authentication (a node's ztunnel is one address).
    #[arg(long, env = "MESHROOT_PEER_RATE_LIMIT", default_value = "200/s,burst=2000", value_parser = rate_limit::parse_limit)]
    peer_rate_limit: Limit,
}

impl Args {
    /// The limits as the CreateCertificate service takes them.
    pub fn limits(&self) -> RateLimits {
        RateLimits { identity: self.identity_rate_limit, node: self.node_rate_limit, peer: self.peer_rate_limit }
    }
}
