//! The command line. One module per command, each holding its flags (`Args`)
//! and its `run`; this module parses, sets up logging and the runtime, and
//! dispatches. `src/main.rs` only calls [`main`].

#[cfg(feature = "bench")]
pub mod bench;
pub mod crds;
pub mod dev;
pub mod doctor;
pub mod pki;
pub mod rate_limits;
pub mod request;
pub mod root;
pub mod serve;

use crate::telemetry::logging::{self, LogFormat};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The command line as parsed: global logging flags and the command.
#[derive(Parser)]
#[command(name = "meshroot", version, about = "One certificate authority for every Istio mesh and cert-manager")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "MESHROOT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, global = true, default_value = "info", env = "MESHROOT_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA locally with no cluster: state in a directory, static tokens.
    Dev(dev::Args),
    /// Run in Kubernetes: TokenReview, several meshes, root distribution.
    Serve(Box<serve::Args>),
    /// Request a workload certificate as pilot-agent does, and verify it.
    Request(request::Args),
    /// Print meshroot's CRDs as YAML, or write them into a directory.
    Crds(crds::Args),
    /// Show or drive a zero-downtime root rotation (docs/rotation.md).
    Root(root::Args),
    /// Offline PKI tasks.
    Pki(pki::Args),
    /// Whether the cluster's Istio meshes can complete mutual TLS with each other, and what to change.
    Doctor(doctor::Args),
    /// Measure CreateCertificate under load against the crypto ceiling (use a release build).
    #[cfg(feature = "bench")]
    Bench(bench::Args),
    /// The benchmark's server process (started by `bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchServer(bench::ServerArgs),
}

/// Key types for a `--key-type` or `--signer` flag, listed in `--help` and in the error for an
/// unknown one.
pub fn key_algorithms() -> impl clap::builder::TypedValueParser<Value = crate::pki::KeyAlgorithm> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(crate::pki::KeyAlgorithm::ALL.map(|a| a.name()))
        .try_map(|name| name.parse::<crate::pki::KeyAlgorithm>())
}

/// An error and its causes on one line, each cause once: some libraries' messages already
/// include their source's text (kube's configuration errors did, three levels deep), and
/// printing the chain repeated it.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        // Only what the message just before already says is left out: text that happens to
        // appear elsewhere (a short cause inside a path) is still printed.
        if previous.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
        previous = message;
    }
    text
}

/// Parses the command line and runs the command; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_level = match &cli.command {
        #[cfg(feature = "bench")]
        Command::Bench(args) => {
            // Threads inherit the CPU set, so pin before the runtime starts any.
            bench::pin_load(args);
            // Only the server process's audit lines matter; keep the report clean.
            "warn"
        }
        #[cfg(feature = "bench")]
        Command::BenchServer(args) => {
            bench::pin_server(args);
            cli.log_level.as_str()
        }
        _ => cli.log_level.as_str(),
    };
    logging::init(cli.log_format, log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // A verdict, not a failure: the report is printed; the status says which verdict.
        Err(e) if e.is::<doctor::Unhealthy>() => {
            eprintln!("doctor: {e}");
            e.downcast_ref::<doctor::Unhealthy>().map_or(ExitCode::FAILURE, |u| ExitCode::from(u.code))
        }
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => dev::run(args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Request(args) => request::run(args).await,
        Command::Crds(args) => crds::run(args),
        Command::Root(args) => root::run(args).await,
        Command::Pki(args) => pki::run(args),
        Command::Doctor(args) => doctor::run(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(args).await,
        #[cfg(feature = "bench")]
        Command::BenchServer(args) => bench::run_server(args).await,
    }
}

/// Parses `meshroot <args>` as the binary would (for tests of flags and
/// their defaults).
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("meshroot").chain(args.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::rate_limit::{Limit, RateLimits};

    /// The limits a bare `meshroot <command>` runs with: the clap defaults,
    /// with no MESHROOT_*_RATE_LIMIT variable in the environment.
    fn default_limits(command: &str) -> RateLimits {
        for var in ["MESHROOT_IDENTITY_RATE_LIMIT", "MESHROOT_NODE_RATE_LIMIT", "MESHROOT_PEER_RATE_LIMIT"] {
            assert!(std::env::var_os(var).is_none(), "{var} is set: the defaults cannot be tested");
        }
        match parse(&[command]).unwrap().command {
            Command::Serve(a) => a.rate_limits.limits(),
            Command::Dev(a) => a.rate_limits.limits(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_and_dev_rate_limit_by_default() {
        let expected = RateLimits {
            identity: Limit { per_second: 50, burst: 1000 },
            node: Limit { per_second: 100, burst: 1000 },
            peer: Limit { per_second: 200, burst: 2000 },
        };
        for command in ["serve", "dev"] {
            assert_eq!(default_limits(command), expected, "meshroot {command}");
        }
        // The library's default (embedders, the in-process tests) is the same.
        assert_eq!(RateLimits::default(), expected);
    }

    /// Every switch of `serve` takes both styles: `--flag` alone and `--flag=true|false`.
    #[test]
    fn serve_switches_accept_both_styles() {
        let options = |extra: &[&str]| {
            let mut args = vec!["serve", "--namespace", "m", "--pod-name", "p"];
            args.extend_from_slice(extra);
            match parse(&args).unwrap().command {
                Command::Serve(a) => a.options().unwrap(),
                _ => unreachable!(),
            }
        };
        for var in ["MESHROOT_GENERATE_ROOT", "MESHROOT_CERT_MANAGER_ISSUER", "MESHROOT_KUBERNETES_CSR_SIGNER"] {
            assert!(std::env::var_os(var).is_none(), "{var} is set: the defaults cannot be tested");
        }
        let defaults = options(&[]);
        assert!(!defaults.generate_root && defaults.cert_manager_issuer && defaults.kubernetes_csr_signer);
        assert!(options(&["--generate-root"]).generate_root);
        assert!(options(&["--generate-root=true"]).generate_root);
        assert!(!options(&["--generate-root=false"]).generate_root);
        assert!(options(&["--generate-root", "--cert-manager-issuer=false"]).generate_root);
        assert!(!options(&["--cert-manager-issuer=false"]).cert_manager_issuer);
        assert!(!options(&["--cert-manager-issuer", "false"]).cert_manager_issuer, "the older spelling still works");
        assert!(options(&["--kubernetes-csr-signer"]).kubernetes_csr_signer);
        assert!(!options(&["--kubernetes-csr-signer=false"]).kubernetes_csr_signer);
        assert!(parse(&["serve", "--generate-root=maybe"]).is_err());
    }

    /// `root`'s flags have the names `pki init` gives the same things, too.
    #[test]
    fn root_flags_accept_pki_inits_names() {
        for args in [
            &["root", "add", "--root-cert", "new.pem"][..],
            &["root", "switch", "--root-cert", "new.pem", "--root-key", "new-key.pem"],
            &["root", "generate", "--out", "d", "--root-lifetime", "365d"],
            &["root", "add", "--cert", "new.pem"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
    }

    /// Every flag and argument of every command says what it is in `--help`, and every boolean
    /// takes one style: `--flag` or `--flag=true|false` (none is bare-only, none is a negative name).
    #[test]
    fn every_flag_has_help_and_booleans_take_one_style() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, bare: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
                let bare_only = matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse);
                if bare_only || arg.get_long().is_some_and(|l| l.starts_with("no-")) {
                    bare.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, bare);
            }
        }
        let (mut missing, mut bare) = (Vec::new(), Vec::new());
        walk(&Cli::command(), "meshroot", &mut missing, &mut bare);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
        assert!(bare.is_empty(), "booleans in another style: {bare:?}");
    }

    /// meshroot's namespace and root Secret have the same names in `root` and `doctor`.
    #[test]
    fn root_and_doctor_name_meshroots_namespace_and_secret_alike() {
        use clap::Parser;
        for command in ["root status", "doctor"] {
            let mut args: Vec<&str> = std::iter::once("meshroot").chain(command.split(' ')).collect();
            args.extend(["-n", "mr", "--namespace", "mr", "--secret", "s"]);
            // Given twice (short and long) is refused: both are the same flag.
            assert!(Cli::try_parse_from(&args).is_err(), "{command}");
            let base = &args[..args.len() - 6];
            for flags in [&["-n", "mr", "--secret", "s"], &["--namespace", "mr", "--secret", "s"]] {
                let ok = [base, flags].concat();
                assert!(Cli::try_parse_from(&ok).is_ok(), "{command}: {ok:?}");
            }
        }
    }

    /// A boolean takes `--flag` and `--flag=false`.
    #[test]
    fn a_boolean_is_set_bare_or_with_a_value() {
        use clap::Parser;
        let force = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Root(root)) => root.force(),
            other => panic!("{args:?}: {}", other.err().map(|e| e.to_string()).unwrap_or_default()),
        };
        assert_eq!(force(&["meshroot", "root", "finish"]), Some(false));
        assert_eq!(force(&["meshroot", "root", "finish", "--force"]), Some(true));
        assert_eq!(force(&["meshroot", "root", "finish", "--force=false"]), Some(false));
        assert_eq!(force(&["meshroot", "root", "finish", "--force=true"]), Some(true));
    }

    /// Each cause is printed once, even when a message already carries its source's text.
    #[test]
    fn an_error_chain_repeats_no_cause() {
        #[derive(Debug)]
        struct Wrapping(std::io::Error);
        impl std::fmt::Display for Wrapping {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "failed to read kubeconfig: {}", self.0)
            }
        }
        impl std::error::Error for Wrapping {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let err = anyhow::Error::new(Wrapping(io)).context("connecting to the Kubernetes API");
        let text = describe(&err);
        assert_eq!(text, "connecting to the Kubernetes API: failed to read kubeconfig: No such file or directory");
        assert_eq!(format!("{err:#}").matches("No such file").count(), 2, "the chain as anyhow prints it");
        // Causes that add something are all kept, even when their text appears further up.
        let plain = anyhow::anyhow!("root cause").context("middle").context("top");
        assert_eq!(describe(&plain), "top: middle: root cause");
        let short = anyhow::anyhow!("invalid").context("parsing").context("reading /etc/invalid/x.pem");
        assert_eq!(describe(&short), "reading /etc/invalid/x.pem: parsing: invalid");
    }

    /// `--key-type` names its values in the help and in the refusal of an unknown one, and
    /// `request` makes the key pilot-agent makes by default (RSA-2048).
    #[test]
    fn key_types_are_listed_and_request_defaults_to_pilot_agents() {
        let err = parse(&["request", "--ca-addr", "x:1", "--root-cert", "r", "--identity", "i", "--key-type", "dsa"])
            .err()
            .unwrap()
            .to_string();
        for name in crate::pki::KeyAlgorithm::ALL.map(|a| a.name()) {
            assert!(err.contains(name), "{name} missing from: {err}");
        }
        match parse(&["request", "--ca-addr", "x:1", "--root-cert", "r", "--identity", "i"]).unwrap().command {
            Command::Request(a) => assert_eq!(a.key_type, crate::pki::KeyAlgorithm::Rsa2048),
            _ => unreachable!(),
        }
        let help = match parse(&["pki", "init", "--help"]) {
            Err(e) => e.to_string(),
            Ok(_) => unreachable!(),
        };
        assert!(help.contains("possible values: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"), "{help}");
    }

    /// `meshroot root`'s namespace and Secret may follow the step, as with kubectl
    /// (`meshroot root status -n X` was refused).
    #[test]
    fn root_flags_may_come_before_or_after_the_step() {
        for args in [
            &["root", "-n", "mesh-ca", "--secret", "ca", "status"][..],
            &["root", "status", "-n", "mesh-ca", "--secret", "ca"],
            &["root", "--namespace", "mesh-ca", "status", "--secret=ca"],
        ] {
            let Command::Root(root) = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).command else {
                unreachable!()
            };
            assert_eq!((root.namespace(), root.secret()), ("mesh-ca", "ca"), "{args:?}");
        }
    }

    /// `serve`'s flag defaults are the library's: TokenReview, Lease and gRPC server settings.
    #[test]
    fn serve_flags_default_to_the_library_defaults() {
        let Command::Serve(args) =
            parse(&["serve", "--namespace", "meshroot", "--pod-name", "meshroot-0"]).unwrap().command
        else {
            unreachable!()
        };
        let opts = args.options().unwrap();
        let token = crate::k8s::tokenreview::TokenReviewConfig::default();
        assert_eq!(format!("{:?}", opts.token), format!("{token:?}"));
        assert_eq!(opts.lease, crate::k8s::leader::LeaseTimings::default());
        assert_eq!(format!("{:?}", opts.server), format!("{:?}", crate::ca::server::ServerOptions::default()));
        assert_eq!(opts.rate_limits, RateLimits::default());
        assert_eq!(opts.cluster_id, crate::names::DEFAULT_CLUSTER_ID);
    }

    /// Flag defaults and the library's option defaults are one set.
    #[test]
    fn dev_flags_default_to_the_library_defaults() {
        let Command::Dev(args) = parse(&["dev"]).unwrap().command else { unreachable!() };
        let from_flags = format!("{:?}", args.options());
        assert_eq!(from_flags, format!("{:?}", crate::dev::DevOptions::default()));
    }
}
