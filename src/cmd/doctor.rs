//! `meshroot doctor`: whether the cluster's meshes can complete mutual TLS with each other,
//! and if not, why and what to change (`crate::doctor`).

use crate::doctor::{self, collect::Target};
use anyhow::Context;

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// The whole report as JSON.
    Json,
}

/// The flags of `meshroot doctor`.
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 when every pair of meshes can complete mutual TLS, 2 when trust is split, \
3 when it cannot be confirmed (a mesh's root is not visible, or no istiod was found), 1 when the cluster cannot be read.")]
pub struct Args {
    /// meshroot's namespace, where its root Secret is (it need not be installed); as `root --namespace`.
    #[arg(long, short = 'n', visible_alias = "meshroot-namespace", env = "POD_NAMESPACE", default_value = "meshroot")]
    namespace: String,
    /// meshroot's root Secret; as `root --secret`.
    #[arg(long, visible_alias = "root-secret", env = "MESHROOT_ROOT_SECRET", default_value = crate::k8s::root::DEFAULT_SECRET)]
    secret: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Output,
}

/// The doctor's verdict when it is not "mutual TLS works": printed, and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{summary}")]
pub struct Unhealthy {
    /// The exit status.
    pub code: u8,
    /// The verdict in one sentence.
    pub summary: String,
}

/// Reads the cluster (KUBECONFIG), prints the report, and fails with [`Unhealthy`] unless
/// mutual TLS works between every pair of meshes.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG)")?;
    let target = Target { namespace: args.namespace, root_secret: args.secret };
    let snapshot = doctor::collect(&client, &target).await?;
    let report = doctor::diagnose(&snapshot);
    match args.output {
        Output::Table => print!("{}", doctor::render::table(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    match report.verdict.exit_code() {
        0 => Ok(()),
        code => Err(Unhealthy { code, summary: report.summary }.into()),
    }
}
