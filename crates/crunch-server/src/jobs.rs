//! The job manager: accepts jobs (bounded queue), runs at most `--jobs` heavy ones at once (each
//! on a blocking thread with its own thread pool, cancel token and progress sink), keeps every
//! job's row in the registry up to date, and cleans up after jobs that do not finish.
//!
//! A job's state changes only under its own lock ([`Active::state`]), so a cancel racing the
//! start of a job ends in exactly one of: cancelled before it started, or cancelled while running.

use crate::cleanup;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::paths::Roots;
use crate::progress::{Live, ProgressView, Sink};
use crate::Config;
use crunch::job::{Job, RunCtx};
use crunch::progress::Cancel;
use crunch_registry::{JobFilter, JobRecord, JobState, Registry};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// What the message of a job stopped by a server shutdown or crash says.
pub const SERVER_STOPPED: &str = "server stopped";
/// Seconds a client is told to wait when the queue is full.
pub const RETRY_AFTER_FULL: u64 = 30;

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: i64,
    /// The job kind (`quantize`, `fit`, …).
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `canceled`.
    #[schema(value_type = String, example = "running")]
    pub state: JobState,
    /// The job as accepted, its paths resolved.
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    /// The latest progress (while running; the last one after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressView>,
    /// The outcome of a job that succeeded (per kind: plan, sizes, metrics…).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why the job failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix times (seconds).
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// The registry run the job recorded (`/v1/runs/{id}`).
    pub run_id: Option<i64>,
}

impl JobView {
    pub fn from_record(r: JobRecord) -> Self {
        JobView {
            id: r.id,
            kind: r.kind,
            state: r.state,
            job: r.job,
            progress: r.progress.and_then(|p| serde_json::from_value(p).ok()),
            result: r.result,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            run_id: r.run_id,
        }
    }
}

/// A job this server holds in memory: queued or running.
pub struct Active {
    pub id: i64,
    pub kind: &'static str,
    heavy: bool,
    job: Job,
    job_json: serde_json::Value,
    created_at: f64,
    started_at: Mutex<Option<f64>>,
    cancel: Cancel,
    /// Wakes the job's task while it waits for a slot (cancelled, or the server stops).
    wake: Notify,
    state: Mutex<JobState>,
    pub live: watch::Sender<Live>,
}

impl Active {
    fn state(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job as the API shows it (nothing read from the registry).
    pub fn view(&self) -> JobView {
        let live = self.live.borrow().clone();
        JobView {
            id: self.id,
            kind: self.kind.to_string(),
            state: live.state,
            job: self.job_json.clone(),
            progress: live.progress,
            result: None,
            error: None,
            created_at: self.created_at,
            started_at: *self.started_at.lock().unwrap_or_else(|e| e.into_inner()),
            finished_at: None,
            run_id: None,
        }
    }
}

/// The job manager.
pub struct Jobs {
    registry: Arc<Mutex<Registry>>,
    registry_path: PathBuf,
    active: Mutex<HashMap<i64, Arc<Active>>>,
    heavy: Arc<Semaphore>,
    light: Arc<Semaphore>,
    queued: AtomicUsize,
    queue_cap: usize,
    threads: usize,
    /// Worker pools of finished jobs, handed to the next job: a job never shares its pool with a
    /// job running at the same time, and the server does not create (and glibc does not give
    /// malloc arenas to) a new set of threads for every job.
    idle_pools: Mutex<Vec<Arc<rayon::ThreadPool>>>,
    metrics: Arc<Metrics>,
    stopping: AtomicBool,
    runtime: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// Open the registry, take over the jobs of a server that is gone and start the queued ones.
    pub fn open(config: &Config, roots: &Roots, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let mut reg = Registry::open(&config.registry)
            .map_err(|e| anyhow::anyhow!("opening the registry {}: {e}", config.registry.display()))?;
        let adopted = reg.adopt_jobs(SERVER_STOPPED)?;
        for r in &adopted.failed {
            let outputs = crunch::job::from_json(r.job.to_string().as_bytes()).map(|j| j.outputs()).unwrap_or_default();
            let new: Vec<PathBuf> = r.new_outputs.iter().map(PathBuf::from).collect();
            let removed = cleanup::remove_leftovers(&outputs, &new);
            tracing::warn!("job {} ({}) was running when the server stopped: marked failed", r.id, r.kind);
            for p in removed {
                tracing::info!("job {}: removed {}", r.id, p.display());
            }
        }
        let jobs = Arc::new(Jobs {
            registry: Arc::new(Mutex::new(reg)),
            registry_path: config.registry.clone(),
            active: Mutex::new(HashMap::new()),
            heavy: Arc::new(Semaphore::new(config.max_heavy_jobs.max(1))),
            light: Arc::new(Semaphore::new(crate::LIGHT_JOBS)),
            queued: AtomicUsize::new(0),
            queue_cap: config.queue,
            threads: config.threads,
            idle_pools: Mutex::new(Vec::new()),
            metrics,
            stopping: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("the server state must be created inside a Tokio runtime"))?,
        });
        for r in adopted.queued {
            let job = crunch::job::from_json(r.job.to_string().as_bytes())
                .map_err(|e| ApiError::from_crunch(e, axum::http::StatusCode::BAD_REQUEST))
                .and_then(|mut j| roots.confine(&mut j).map(|()| j));
            match job {
                Ok(job) => {
                    tracing::info!("job {} ({}) was queued when the server stopped: queued again", r.id, r.kind);
                    jobs.queued.fetch_add(1, Ordering::SeqCst);
                    jobs.launch(r.id, job, r.job.clone(), r.created_at);
                }
                Err(e) => {
                    let msg = format!("cannot be run again after a restart: {}", e.message);
                    lock(&jobs.registry).finish_job(r.id, JobState::Failed, None, Some(&msg), None)?;
                }
            }
        }
        Ok(jobs)
    }

    /// Run `f` with the registry on a blocking thread.
    pub async fn with_registry<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ApiError> {
        let reg = self.registry.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&reg)))
            .await
            .map_err(|e| ApiError::internal(format!("registry task: {e}")))?
            .map_err(Into::into)
    }

    /// Jobs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// The in-memory job `id`, if it is queued or running here.
    pub fn active(&self, id: i64) -> Option<Arc<Active>> {
        lock(&self.active).get(&id).cloned()
    }

    /// Accept `job` (paths already confined): recorded as queued, started when a slot is free.
    ///
    /// # Errors
    /// `429` when the queue is full, `503` while stopping, `500` when the registry fails.
    pub async fn submit(self: &Arc<Self>, job: Job) -> Result<JobView, ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is stopping"));
        }
        let cap = self.queue_cap;
        if self.queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q < cap).then_some(q + 1)).is_err() {
            return Err(ApiError::too_many(
                format!("the queue is full ({cap} jobs waiting); try again later"),
                RETRY_AFTER_FULL,
            ));
        }
        let json = match serde_json::to_value(&job) {
            Ok(v) => v,
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(ApiError::internal(format!("job to JSON: {e}")));
            }
        };
        let kind = job.kind();
        let j = json.clone();
        let id = match self.with_registry(move |r| r.insert_job(kind, &j)).await {
            Ok(id) => id,
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        let a = self.launch(id, job, json, crunch_registry::process::now());
        Ok(a.view())
    }

    fn launch(self: &Arc<Self>, id: i64, job: Job, job_json: serde_json::Value, created_at: f64) -> Arc<Active> {
        let (live, _) = watch::channel(Live { state: JobState::Queued, progress: None });
        let a = Arc::new(Active {
            id,
            kind: job.kind(),
            heavy: job.is_heavy(),
            job,
            job_json,
            created_at,
            started_at: Mutex::new(None),
            cancel: Cancel::new(),
            wake: Notify::new(),
            state: Mutex::new(JobState::Queued),
            live,
        });
        lock(&self.active).insert(id, a.clone());
        let me = self.clone();
        let task = a.clone();
        self.runtime.spawn(async move { me.drive(task).await });
        a
    }

    async fn drive(self: Arc<Self>, a: Arc<Active>) {
        let sem = if a.heavy { self.heavy.clone() } else { self.light.clone() };
        let permit = tokio::select! {
            biased;
            () = a.wake.notified() => return,
            p = sem.acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        {
            let mut st = a.state();
            if *st != JobState::Queued || self.stopping.load(Ordering::SeqCst) {
                // Cancelled meanwhile (the canceller recorded it), or the server is stopping (the
                // job stays queued in the registry for the next start).
                return;
            }
            *st = JobState::Running;
        }
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let outputs = a.job.outputs();
        let new_outputs: Vec<PathBuf> = outputs.iter().filter(|p| p.symlink_metadata().is_err()).cloned().collect();
        let new_names: Vec<String> = new_outputs.iter().map(|p| p.display().to_string()).collect();
        let id = a.id;
        if let Err(e) = self.with_registry(move |r| r.start_job(id, &new_names)).await {
            tracing::error!("job {id}: cannot record its start: {e}");
        }
        *lock(&a.started_at) = Some(crunch_registry::process::now());
        a.live.send_modify(|l| l.state = JobState::Running);

        let started = Instant::now();
        let sink = Arc::new(Sink::new(id, a.live.clone(), self.registry.clone()));
        let (job, cancel, reg) = (a.job.clone(), a.cancel.clone(), Some(self.registry_path.clone()));
        let idle = lock(&self.idle_pools).pop();
        let pool = match idle {
            Some(p) => Ok(p),
            None => crunch::job::pool(self.threads),
        };
        let res = match pool {
            Ok(pool) => {
                let ctx = RunCtx { progress: sink, cancel, pool: pool.clone(), registry: reg };
                let res = tokio::task::spawn_blocking(move || crunch::job::run(&job, &ctx)).await;
                lock(&self.idle_pools).push(pool);
                res
            }
            Err(e) => Ok(Err(e)),
        };
        drop(permit);
        let seconds = started.elapsed().as_secs_f64();
        let stopping = self.stopping.load(Ordering::SeqCst);
        let (state, result, error, run_id) = match res {
            Ok(Ok(outcome)) => {
                let value = serde_json::to_value(&outcome).unwrap_or_default();
                (JobState::Succeeded, Some(value), None, outcome.run_id())
            }
            Ok(Err(_)) if stopping && a.cancel.is_cancelled() => {
                (JobState::Failed, None, Some(SERVER_STOPPED.to_string()), None)
            }
            Ok(Err(crunch::Error::Cancelled)) => (JobState::Canceled, None, Some("canceled".to_string()), None),
            Ok(Err(e)) if a.cancel.is_cancelled() => (JobState::Canceled, None, Some(format!("canceled ({e})")), None),
            Ok(Err(e)) => (JobState::Failed, None, Some(e.to_string()), None),
            Err(e) => (JobState::Failed, None, Some(format!("the job stopped unexpectedly: {e}")), None),
        };
        if state != JobState::Succeeded {
            let (o, n) = (outputs.clone(), new_outputs.clone());
            let removed = tokio::task::spawn_blocking(move || cleanup::remove_leftovers(&o, &n)).await;
            for p in removed.unwrap_or_default() {
                tracing::info!("job {id}: removed {}", p.display());
            }
        }
        self.metrics.job_ended(a.kind, seconds, state, &a.job, result.as_ref());
        let (r, e) = (result.clone(), error.clone());
        let last = a.live.borrow().progress.as_ref().and_then(|p| serde_json::to_value(p).ok());
        let ended = self
            .with_registry(move |reg| {
                if let Some(p) = &last {
                    reg.set_job_progress(id, p)?;
                }
                reg.finish_job(id, state, r.as_ref(), e.as_deref(), run_id)
            })
            .await;
        if let Err(err) = ended {
            tracing::error!("job {id}: cannot record its end: {err}");
        }
        match state {
            JobState::Succeeded => tracing::info!("job {id} ({}) succeeded in {seconds:.1} s", a.kind),
            _ => tracing::info!("job {id} ({}) {}: {}", a.kind, state.as_str(), error.as_deref().unwrap_or("")),
        }
        *a.state() = state;
        lock(&self.active).remove(&id);
        // A job frees most of what it allocated; hand it back now rather than at the next tick.
        let _ = tokio::task::spawn_blocking(crate::trim::release_free_memory).await;
        // Last: an event stream that sees the final state finds the job ended in the registry.
        a.live.send_modify(|l| l.state = state);
    }

    /// Cancel job `id`: a queued job ends at once, a running one is told to stop (it removes its
    /// partial output and ends `canceled`).
    ///
    /// # Errors
    /// `404` for an unknown job, `409` for one that has already ended.
    pub async fn cancel(&self, id: i64) -> Result<JobView, ApiError> {
        let Some(a) = self.active(id) else {
            let r = self.with_registry(move |r| r.job(id)).await?;
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                format!("job {id} has already ended ({})", r.state.as_str()),
            ));
        };
        let was_queued = {
            let mut st = a.state();
            match *st {
                JobState::Queued => {
                    *st = JobState::Canceled;
                    true
                }
                JobState::Running => false,
                s => {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        format!("job {id} has already ended ({})", s.as_str()),
                    ))
                }
            }
        };
        a.cancel.cancel();
        if was_queued {
            a.wake.notify_one();
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let msg = "canceled before it started";
            self.with_registry(move |r| r.finish_job(id, JobState::Canceled, None, Some(msg), None)).await?;
            self.metrics.job_ended(a.kind, 0.0, JobState::Canceled, &a.job, None);
            lock(&self.active).remove(&id);
            a.live.send_modify(|l| l.state = JobState::Canceled);
        }
        let mut v = a.view();
        if was_queued {
            v.error = Some("canceled before it started".into());
        }
        Ok(v)
    }

    /// Stop: refuse new jobs, cancel the running ones (they end failed, "server stopped"), leave
    /// the queued ones queued in the registry, and wait up to `grace` for the running ones.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Active>> = lock(&self.active).values().cloned().collect();
        for a in &all {
            match *a.state() {
                JobState::Running => a.cancel.cancel(),
                _ => a.wake.notify_one(),
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let running = lock(&self.active).values().any(|a| *a.state() == JobState::Running);
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("jobs still running after {grace:?}; the next start marks them failed");
    }

    /// Jobs matching `filter`, newest first, with the live state of the ones running here.
    pub async fn list(&self, filter: JobFilter) -> Result<Vec<JobView>, ApiError> {
        let rows = self.with_registry(move |r| r.list_jobs(&filter)).await?;
        Ok(rows
            .into_iter()
            .map(|r| match self.active(r.id) {
                Some(a) => a.view(),
                None => JobView::from_record(r),
            })
            .collect())
    }

    /// Job `id`.
    pub async fn get(&self, id: i64) -> Result<JobView, ApiError> {
        match self.active(id) {
            Some(a) => Ok(a.view()),
            None => Ok(JobView::from_record(self.with_registry(move |r| r.job(id)).await?)),
        }
    }
}
