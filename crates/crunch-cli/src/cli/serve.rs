//! `crunch serve`: the HTTP API, live progress, metrics and the dashboard (crunch-server).

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs --token-file.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folders jobs may read models and texts from (repeatable).
    #[arg(long, required = true, num_args = 1..)]
    models: Vec<PathBuf>,
    /// The folder jobs write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// A file holding the bearer token clients must send (Authorization: Bearer TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Heavy jobs running at once, each with every core.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Jobs waiting at most; more are refused with 429 and Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Registry database holding the jobs and runs (default: $CRUNCH_REGISTRY or
    /// ~/.local/share/crunch/registry.db).
    #[arg(long)]
    registry: Option<PathBuf>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let registry = crunch::job::record::registry_path(a.registry.as_deref())
        .context("crunch serve keeps its jobs in the registry: give --registry (CRUNCH_REGISTRY=off)")?;
    let mut opts = crunch_server::ServeOptions::new(a.listen, a.models, a.out, registry);
    opts.token_file = a.token_file;
    opts.jobs = a.jobs;
    opts.queue = a.queue;
    // Few, long-lived threads: every new thread may get its own malloc arena, and freed memory
    // kept in many arenas is what made a long-running server's RSS creep (docs/SERVER.md).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(a.jobs.max(1) + 16)
        .thread_keep_alive(std::time::Duration::from_secs(600))
        .thread_name("crunch-http")
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    rt.block_on(crunch_server::serve(opts))
}
