//! The command-line tier, in one test binary: the compiled `meshroot`
//! binary run as a user would (dev, serve, request, pki init, check-config),
//! and the Helm chart rendered by a real helm. See tests/README.md.

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod commands;
mod image;
mod serve;
