//! The command-line commands, as library functions so tests can run them.

pub mod dev;
pub mod pki_init;
pub mod request;
pub mod root;
pub mod serve;
