//! The dashboard at `/`: one static page (HTML + plain JS, no build step) compiled into the
//! binary. It lists the models, starts jobs, follows them over their event streams, and shows the
//! runs table and the report's Pareto plots.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
pub const PAGE: &str = include_str!("../assets/dashboard.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}
