//! The routes and their handlers. Each handler is annotated for the OpenAPI document
//! (`openapi.rs` collects them).

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::jobs::JobView;
use crate::models::ModelInfo;
use crate::progress::Live;
use crate::{auth, dashboard, estimate, openapi, AppState};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use crunch_registry::{JobFilter, JobState};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::time::Duration;

/// Event streams send at most one progress event per this interval.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(200);
/// Largest page of jobs or runs.
pub const MAX_LIST: usize = 1000;

/// Every answered request may have left freed memory for the background trim (see [`crate::trim`]).
async fn freed_after(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let res = next.run(req).await;
    crate::trim::mark();
    res
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/formats", get(formats))
        .route("/v1/estimate", axum::routing::post(estimate_plan))
        .route("/v1/models", get(models))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/report", get(report))
        .route("/v1/report/{plot}", get(report_plot))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_doc))
        .route("/", get(dashboard::page))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn(freed_after))
        .layer(DefaultBodyLimit::max(crate::MAX_BODY_BYTES))
        .with_state(state)
}

fn parse_id(s: &str, what: &str) -> ApiResult<i64> {
    s.parse::<i64>().map_err(|_| ApiError::field("id", format!("{what} id {s:?} is not a number")))
}

fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Liveness.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    pub version: String,
    /// Jobs waiting for a slot.
    pub queue_depth: usize,
}

#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn healthz(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        queue_depth: s.inner().jobs.queue_depth(),
    })
}

#[utoipa::path(get, path = "/openapi.json", tag = "server",
    responses((status = 200, description = "This API's OpenAPI document", content_type = "application/json")))]
pub async fn openapi_doc() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::openapi_json()).into_response()
}

/// Submit a job.
///
/// The body is a job: `kind` plus the fields of that kind (see the `Job` schema). Paths are
/// resolved (relative inputs against the first models folder, relative outputs against the
/// out folder) and must stay inside them.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = openapi::JobBody, description = "The job"),
    responses(
        (status = 202, description = "Accepted; `Location` names the job", body = JobView),
        (status = 400, description = "Malformed JSON, or a wrong, missing or unknown field (named)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "A path outside the folders it may be in (field named)", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB"),
        (status = 429, description = "The queue is full (see `Retry-After`)", body = ErrorBody),
    ))]
pub async fn submit_job(State(s): State<AppState>, b: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let b = body(b)?;
    let mut job = crate::body::job_from_json(&b)?;
    let roots = s.inner().roots.clone();
    let job = tokio::task::spawn_blocking(move || roots.confine(&mut job).map(|()| job))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let view = s.inner().jobs.submit(job).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", view.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, headers, Json(view)).into_response())
}

/// Which jobs to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// `queued`, `running`, `succeeded`, `failed` or `canceled`.
    pub state: Option<String>,
    pub kind: Option<String>,
    /// Only jobs with a smaller id (the next page).
    pub before: Option<i64>,
    /// At most this many (default 100, newest first).
    pub limit: Option<usize>,
    /// Whole results; by default the bulky parts (`plan`, `profile`: per-tensor tables) are left
    /// out of listings (`/v1/jobs/{id}` always has them).
    pub full: Option<bool>,
}

/// Keys of a result left out of listings unless `full=true`.
pub const BULKY_RESULT_KEYS: &[&str] = &["plan", "profile"];

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, description = "Jobs, newest first", body = Vec<JobView>),
              (status = 400, description = "Bad query", body = ErrorBody)))]
pub async fn list_jobs(
    State(s): State<AppState>,
    q: Result<Query<JobsQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<JobView>>> {
    let q = query(q)?;
    let state = match q.state.as_deref() {
        Some(st) => Some(JobState::parse(st).ok_or_else(|| ApiError::field("state", format!("unknown state {st:?}")))?),
        None => None,
    };
    let filter =
        JobFilter { state, kind: q.kind, before: q.before, limit: Some(q.limit.unwrap_or(100).clamp(1, MAX_LIST)) };
    let mut jobs = s.inner().jobs.list(filter).await?;
    if !q.full.unwrap_or(false) {
        for j in &mut jobs {
            if let Some(serde_json::Value::Object(r)) = &mut j.result {
                for k in BULKY_RESULT_KEYS {
                    r.remove(*k);
                }
            }
        }
    }
    Ok(Json(jobs))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "The job: state, progress, result or error", body = JobView),
              (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<JobView>> {
    Ok(Json(s.inner().jobs.get(parse_id(&id, "job")?).await?))
}

/// Cancel a job: a queued one ends at once, a running one stops at its next check and removes
/// its partial output. Both end `canceled`.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, description = "Cancelled, or told to stop", body = JobView),
              (status = 404, description = "No such job", body = ErrorBody),
              (status = 409, description = "The job has already ended", body = ErrorBody)))]
pub async fn cancel_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let v = s.inner().jobs.cancel(parse_id(&id, "job")?).await?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// One progress event.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProgressEvent {
    pub id: i64,
    #[schema(value_type = String)]
    pub state: JobState,
    pub progress: Option<crate::progress::ProgressView>,
}

fn progress_event(id: i64, live: &Live) -> Event {
    let e = ProgressEvent { id, state: live.state, progress: live.progress.clone() };
    Event::default().event("progress").json_data(&e).unwrap_or_else(|_| Event::default().event("progress"))
}

enum Phase {
    Start,
    Live,
    Final,
    Done,
}

struct Stream {
    id: i64,
    phase: Phase,
    live: Option<tokio::sync::watch::Receiver<Live>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    state: AppState,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

async fn next_event(mut st: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    loop {
        match st.phase {
            Phase::Done => return None,
            Phase::Start => {
                if *st.shutdown.borrow() {
                    return None;
                }
                let Some(rx) = st.live.as_mut() else {
                    st.phase = Phase::Final;
                    continue;
                };
                let live = rx.borrow_and_update().clone();
                if live.state.is_final() {
                    st.phase = Phase::Final;
                    continue;
                }
                st.phase = Phase::Live;
                return Some((Ok(progress_event(st.id, &live)), st));
            }
            Phase::Live => {
                let rx = st.live.as_mut()?;
                tokio::select! {
                    r = rx.changed() => {
                        if r.is_err() {
                            st.phase = Phase::Final;
                            continue;
                        }
                    }
                    _ = st.shutdown.changed() => return None,
                }
                // Let a burst of updates settle into one event.
                tokio::time::sleep(EVENT_INTERVAL).await;
                let live = rx.borrow_and_update().clone();
                if live.state.is_final() {
                    st.phase = Phase::Final;
                    continue;
                }
                return Some((Ok(progress_event(st.id, &live)), st));
            }
            Phase::Final => {
                st.phase = Phase::Done;
                let ev = match st.state.inner().jobs.get(st.id).await {
                    Ok(v) => Event::default().event("result").json_data(&v),
                    Err(e) => Event::default().event("error").json_data(ErrorBody { error: e.message, field: None }),
                };
                return Some((Ok(ev.unwrap_or_else(|_| Event::default().event("error"))), st));
            }
        }
    }
}

/// Follow a job: server-sent events.
///
/// `progress` events (`ProgressEvent`: state, stage, done/total, percent, current tensor or
/// chunk, ETA) while the job waits and runs, then one `result` event with the whole job
/// (`JobView`: state, result or error), then the stream ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, description = "`text/event-stream`: `progress` events (ProgressEvent), then `result` (JobView)",
               content_type = "text/event-stream", body = String),
              (status = 404, description = "No such job", body = ErrorBody),
              (status = 429, description = "Too many event streams open", body = ErrorBody)))]
pub async fn job_events(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id, "job")?;
    let slot = s
        .inner()
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::too_many("too many event streams are open; try again later", 5))?;
    let live = s.inner().jobs.active(id).map(|a| a.live.subscribe());
    if live.is_none() {
        // Ended or unknown: 404 for unknown.
        s.inner().jobs.get(id).await?;
    }
    let st = Stream {
        id,
        phase: Phase::Start,
        live,
        shutdown: s.inner().shutdown.subscribe(),
        state: s.clone(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(st, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// Every GGUF type crunch knows and the quantization presets.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Formats {
    pub types: Vec<TypeInfo>,
    pub presets: Vec<PresetInfo>,
}

/// A GGUF tensor type.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TypeInfo {
    /// llama.cpp's name (`Q4_K`).
    pub name: String,
    /// The GGUF type code.
    pub code: u32,
    /// Weights per block.
    pub block_size: usize,
    /// Bytes per block.
    pub bytes_per_block: usize,
    pub bits_per_weight: f64,
    /// A block-quantized type (not a plain float or integer).
    pub quantized: bool,
    /// crunch can write it (quantize to it).
    pub quantize: bool,
    /// crunch can read it (dequantize it, evaluate a model holding it).
    pub dequantize: bool,
    /// crunch multiplies it directly in its forward pass (a dot-product kernel).
    pub dot: bool,
    /// Its quantizer uses importance weights (an imatrix).
    pub importance_weights: bool,
}

/// A llama.cpp quantization preset (`Q4_K_M`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct PresetInfo {
    pub name: String,
    /// `general.file_type`.
    pub code: u32,
    /// The type most tensors get.
    pub default_type: String,
    /// Bits per weight of the default type (the file's is a little different: rules and kept tensors).
    pub default_bits_per_weight: f64,
}

#[utoipa::path(get, path = "/v1/formats", tag = "models",
    responses((status = 200, description = "Types and presets", body = Formats)))]
pub async fn formats() -> Json<Formats> {
    use crunch::quantize::Ftype;
    use crunch_core::GgmlType;
    let types = GgmlType::ALL
        .iter()
        .map(|&t| {
            let k = crunch_quant::kernels(t);
            TypeInfo {
                name: t.name().to_string(),
                code: t.code(),
                block_size: t.block_size(),
                bytes_per_block: t.type_size(),
                bits_per_weight: t.bits_per_weight(),
                quantized: t.is_quantized(),
                quantize: k.is_some(),
                dequantize: k.is_some(),
                dot: k.is_some_and(|k| k.vec_dot.is_some()),
                importance_weights: k.is_some_and(|k| k.uses_weights),
            }
        })
        .collect();
    let presets = Ftype::ALL
        .iter()
        .map(|&f| PresetInfo {
            name: f.name().to_string(),
            code: f.code(),
            default_type: f.default_type().name().to_string(),
            default_bits_per_weight: f.default_type().bits_per_weight(),
        })
        .collect();
    Json(Formats { types, presets })
}

/// Size, bits per weight and memory of a recipe for a model, from its plan; nothing is written.
#[utoipa::path(post, path = "/v1/estimate", tag = "models",
    request_body(content = estimate::EstimateRequest, description = "The model and the recipe"),
    responses((status = 200, description = "The estimate", body = estimate::Estimate),
              (status = 400, description = "A wrong field (named)", body = ErrorBody),
              (status = 403, description = "The model is outside the folders", body = ErrorBody)))]
pub async fn estimate_plan(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<estimate::Estimate>> {
    let b = body(b)?;
    let req = estimate::parse(&b)?;
    let _slot = s.inner().readers.clone().acquire_owned().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let st = s.clone();
    let est = tokio::task::spawn_blocking(move || estimate::estimate(&st.inner().roots, &st.inner().headers, req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(est))
}

#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Models under the folders, with a summary", body = Vec<ModelInfo>)))]
pub async fn models(State(s): State<AppState>) -> ApiResult<Json<Vec<ModelInfo>>> {
    let _slot = s.inner().readers.clone().acquire_owned().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let st = s.clone();
    let list = tokio::task::spawn_blocking(move || {
        let inner = st.inner();
        inner.models.list(&inner.roots.models, &inner.roots.out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(list))
}

/// Which runs to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    pub kind: Option<String>,
    /// `running`, `ok` or `failed`.
    pub status: Option<String>,
    /// Runs started by this run (a search's candidates).
    pub parent: Option<i64>,
    /// At most this many (default 100, newest first).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/runs", tag = "registry", params(RunsQuery),
    responses((status = 200, description = "Runs, newest first, with their metrics", body = Vec<Object>),
              (status = 400, description = "Bad query", body = ErrorBody)))]
pub async fn list_runs(
    State(s): State<AppState>,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let q = query(q)?;
    let limit = Some(q.limit.unwrap_or(100).clamp(1, MAX_LIST));
    let f = crunch::history::filter(q.kind, q.status.as_deref(), q.parent, limit)?;
    let runs = s.inner().jobs.with_registry(move |r| crunch::history::list(r, &f)).await?;
    Ok(Json(serde_json::to_value(runs).map_err(|e| ApiError::internal(e.to_string()))?))
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "registry",
    params(("id" = i64, Path, description = "Run id")),
    responses((status = 200, description = "Everything recorded about the run", body = Object),
              (status = 404, description = "No such run", body = ErrorBody)))]
pub async fn get_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = parse_id(&id, "run")?;
    let run = s.inner().jobs.with_registry(move |r| crunch::history::get(r, Some(id))).await?;
    Ok(Json(serde_json::to_value(run).map_err(|e| ApiError::internal(e.to_string()))?))
}

/// Which runs the report shows.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// Comma-separated run ids (a search run brings its candidates). Default: the newest search
    /// run, else the newest finished runs that wrote a model.
    pub runs: Option<String>,
    /// `html` (default) or `json` (the data behind the page).
    pub format: Option<String>,
}

async fn report_data(s: &AppState, runs: Option<&str>) -> ApiResult<crunch::report::ReportData> {
    let ids = match runs {
        Some(r) if !r.trim().is_empty() => r
            .split(',')
            .map(|x| x.trim().parse::<i64>().map_err(|_| ApiError::field("runs", format!("{x:?} is not a run id"))))
            .collect::<ApiResult<Vec<i64>>>()?,
        _ => Vec::new(),
    };
    s.inner().jobs.with_registry(move |r| crate::report::collect(r, &ids)).await
}

#[utoipa::path(get, path = "/v1/report", tag = "registry", params(ReportQuery),
    responses((status = 200, description = "The HTML report (Pareto plots, type maps, metrics), or its data as JSON",
               content_type = "text/html", body = String),
              (status = 404, description = "A run that does not exist", body = ErrorBody)))]
pub async fn report(State(s): State<AppState>, q: Result<Query<ReportQuery>, QueryRejection>) -> ApiResult<Response> {
    let q = query(q)?;
    let d = report_data(&s, q.runs.as_deref()).await?;
    match q.format.as_deref() {
        None | Some("html") => {
            Ok(([(header::CACHE_CONTROL, "no-store")], Html(crunch::report::html(&d))).into_response())
        }
        Some("json") => Ok(Json(d).into_response()),
        Some(o) => Err(ApiError::field("format", format!("unknown format {o:?} (html, json)"))),
    }
}

#[utoipa::path(get, path = "/v1/report/{plot}", tag = "registry",
    params(("plot" = String, Path, description = "A plot's file name, e.g. `pareto_size_kld.svg`"), ReportQuery),
    responses((status = 200, description = "The plot", content_type = "image/svg+xml", body = String),
              (status = 404, description = "No such plot", body = ErrorBody)))]
pub async fn report_plot(
    State(s): State<AppState>,
    Path(plot): Path<String>,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let d = report_data(&s, q.runs.as_deref()).await?;
    let svg = crunch::report::plots(&d)
        .into_iter()
        .find(|(name, _)| *name == plot)
        .map(|(_, svg)| svg)
        .ok_or_else(|| ApiError::not_found(format!("no plot {plot:?}")))?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

#[utoipa::path(get, path = "/metrics", tag = "server",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let counts = s.inner().jobs.with_registry(|r| r.count_jobs()).await?;
    let text = s.inner().metrics.render(&counts, s.inner().jobs.queue_depth());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
