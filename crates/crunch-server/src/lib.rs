//! crunch-server: every crunch job over HTTP, with live progress, the registry, Prometheus metrics,
//! an OpenAPI document and a dashboard.
//!
//! Key decisions:
//! - **A thin front end over `crunch::job::run`**: a request body is a [`crunch::job::Job`]
//!   (parsed by `crunch::job::from_json`, so a wrong field is a `400` naming it), its paths are
//!   confined to the `--models` roots (inputs) and the `--out` root (outputs) after symlinks are
//!   resolved ([`paths`]), and the job runs on a blocking thread with its own thread pool, cancel
//!   token and a progress sink that feeds the server-sent event streams.
//! - **Jobs live in the registry** (`crunch-registry`'s `jobs` table) from the moment they are
//!   accepted, so a restarted server lists every job it ever accepted, runs the queued ones again
//!   and marks the ones that were running as failed ("server stopped"), removing their temporary
//!   and partial outputs.
//! - **Bounded everywhere**: `--jobs` heavy jobs at once, `--queue` waiting (then `429` with
//!   `Retry-After`), request bodies and event streams capped.
//! - **[`app`] builds the whole router from an [`AppState`]**, so tests drive it in-process without
//!   a socket; [`serve`] binds it and shuts down gracefully on SIGTERM or Ctrl-C.

#![deny(unsafe_code)]

mod api;
mod auth;
mod body;
mod cleanup;
mod dashboard;
mod error;
mod estimate;
mod jobs;
mod metrics;
mod models;
mod openapi;
pub mod paths;
mod progress;
mod report;
mod trim;

pub use error::ApiError;
pub use openapi::openapi_json;

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest request body accepted (a job is a few hundred bytes; inline search recipes more).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Event streams open at once, by default.
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 64;
/// Jobs that only look at files (`inspect`, `verify`) run beside the heavy ones, this many at once.
pub const LIGHT_JOBS: usize = 2;
/// How long a graceful shutdown waits for running jobs to stop.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// What `crunch serve` is given on its command line.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Folders jobs may read models and texts from.
    pub models: Vec<PathBuf>,
    /// The folder jobs write into (created if missing).
    pub out: PathBuf,
    /// A file holding the bearer token (required when `listen` is not a loopback address).
    pub token_file: Option<PathBuf>,
    /// Heavy jobs running at once (each with every core).
    pub jobs: usize,
    /// Jobs waiting at most; more are refused with `429`.
    pub queue: usize,
    /// The SQLite registry (jobs and runs).
    pub registry: PathBuf,
}

impl ServeOptions {
    /// Options with the defaults: one heavy job at a time, 64 waiting, no token.
    pub fn new(listen: SocketAddr, models: Vec<PathBuf>, out: PathBuf, registry: PathBuf) -> Self {
        ServeOptions { listen, models, out, token_file: None, jobs: 1, queue: 64, registry }
    }
}

/// Everything the router needs to know, already checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub models: Vec<PathBuf>,
    pub out: PathBuf,
    pub registry: PathBuf,
    /// The bearer token; required on every API request when set.
    pub token: Option<String>,
    /// Refuse to run without a token (a listener that is not loopback).
    pub require_token: bool,
    pub max_heavy_jobs: usize,
    pub queue: usize,
    pub max_event_streams: usize,
    /// Worker threads per job (0 = every core).
    pub threads: usize,
}

impl Config {
    /// A loopback configuration with the defaults.
    pub fn new(models: Vec<PathBuf>, out: PathBuf, registry: PathBuf) -> Self {
        Config {
            models,
            out,
            registry,
            token: None,
            require_token: false,
            max_heavy_jobs: 1,
            queue: 64,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
            threads: 0,
        }
    }

    /// The configuration `crunch serve` runs with: reads the token file, and refuses a listener
    /// that is not loopback without one.
    ///
    /// # Errors
    /// An unreadable or empty token file, a non-loopback listener without a token, zero jobs.
    pub fn from_options(o: &ServeOptions) -> anyhow::Result<Self> {
        let token = match &o.token_file {
            Some(f) => {
                let t =
                    std::fs::read_to_string(f).with_context(|| format!("reading the token file {}", f.display()))?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    bail!("the token file {} is empty", f.display());
                }
                Some(t)
            }
            None => None,
        };
        let require_token = !o.listen.ip().is_loopback();
        if require_token && token.is_none() {
            bail!("listening on {} (not loopback) needs a bearer token: give --token-file", o.listen);
        }
        if o.jobs == 0 {
            bail!("--jobs must be at least 1");
        }
        Ok(Config {
            token,
            require_token,
            max_heavy_jobs: o.jobs,
            queue: o.queue,
            ..Config::new(o.models.clone(), o.out.clone(), o.registry.clone())
        })
    }
}

/// The server's shared state: configuration, confined roots, the job manager, metrics.
#[derive(Clone)]
pub struct AppState(Arc<State>);

pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) roots: paths::Roots,
    pub(crate) jobs: Arc<jobs::Jobs>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) models: models::ModelCache,
    pub(crate) headers: estimate::HeaderCache,
    /// Estimates and model listings at once (each reads headers on a blocking thread).
    pub(crate) readers: Arc<tokio::sync::Semaphore>,
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Open the registry, take over the jobs of a server that stopped (running ones are marked
    /// failed and their partial outputs removed, queued ones are run again) and start.
    ///
    /// Must be called inside a Tokio runtime (queued jobs are started at once).
    ///
    /// # Errors
    /// A models root that does not exist, an out root that cannot be created, a registry that
    /// cannot be opened, or `require_token` without a token.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        if config.require_token && config.token.is_none() {
            bail!("a listener that is not loopback needs a bearer token");
        }
        if config.models.is_empty() {
            bail!("give at least one models folder");
        }
        let roots = paths::Roots::new(&config.models, &config.out)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let jobs = jobs::Jobs::open(&config, &roots, metrics.clone())?;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let streams = Arc::new(tokio::sync::Semaphore::new(config.max_event_streams.max(1)));
        let state = AppState(Arc::new(State {
            config,
            roots,
            jobs,
            metrics,
            models: models::ModelCache::default(),
            headers: estimate::HeaderCache::default(),
            readers: Arc::new(tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))),
            streams,
            shutdown,
        }));
        Ok(state)
    }

    /// Stop: event streams end, new jobs are refused, running jobs are cancelled (recorded as
    /// failed, "server stopped"; queued ones stay queued for the next start). Waits up to
    /// `grace` for the running jobs to remove their partial outputs.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.0.shutdown.send_replace(true);
        self.0.jobs.shutdown(grace).await;
    }

    pub(crate) fn inner(&self) -> &State {
        &self.0
    }
}

/// The whole HTTP API, the dashboard, `/metrics` and `/openapi.json` over `state`.
pub fn app(state: AppState) -> axum::Router {
    api::router(state)
}

/// Bind `opts.listen` and serve until SIGTERM or Ctrl-C, then shut down gracefully.
///
/// # Errors
/// Bad options (see [`Config::from_options`]), the address cannot be bound, the registry
/// cannot be opened.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let config = Config::from_options(&opts)?;
    let state = AppState::new(config)?;
    let listener =
        tokio::net::TcpListener::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!("crunch serve: listening on http://{addr}");
    eprintln!("crunch serve: listening on http://{addr}");
    let router = app(state.clone());
    let stopping = state.clone();
    let trimmer = tokio::spawn(trim::background());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            signal().await;
            tracing::info!("crunch serve: stopping");
            eprintln!("crunch serve: stopping");
            // Event streams end and running jobs are cancelled before the server waits for the
            // open connections to close.
            stopping.shutdown(SHUTDOWN_GRACE).await;
        })
        .await
        .context("serving")?;
    trimmer.abort();
    Ok(())
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
