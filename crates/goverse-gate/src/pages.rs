//! Web pages a gate serves beside its API: a sample's or an application's static files.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One file of a page: its name, content type and content.
pub type PageFile = (&'static str, &'static str, &'static str);

/// Routes serving `files` under `/{mount}/` (`index.html` at `/{mount}/`, `/{mount}`
/// redirected there), to merge into a gate's HTTP router. The pages call the API of the gate
/// that serves them with relative paths, so no cross-origin setup is needed.
///
/// # Panics
/// When `mount` is empty or contains a `/`.
pub fn pages_router(mount: &'static str, files: &'static [PageFile]) -> Router {
    assert!(
        !mount.is_empty() && !mount.contains('/'),
        "a page mount is one path segment"
    );
    let serve = move |name: &str| -> Response {
        match files.iter().find(|(n, _, _)| *n == name) {
            Some((_, content_type, body)) => (
                [
                    (header::CONTENT_TYPE, *content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                *body,
            )
                .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                format!("no file {name:?} under /{mount}/"),
            )
                .into_response(),
        }
    };
    let index = serve;
    Router::new()
        .route(
            &format!("/{mount}"),
            get(move || async move { Redirect::permanent(&format!("/{mount}/")) }),
        )
        .route(
            &format!("/{mount}/"),
            get(move || async move { index("index.html") }),
        )
        .route(
            &format!("/{mount}/{{file}}"),
            get(move |Path(name): Path<String>| async move { serve(&name) }),
        )
}
