//! `GET /`: the seed's contract, `Hello World!` as text, for every client that does not ask
//! for HTML; a browser gets the web page, which shows the same greeting.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, header};

use super::AppState;

pub const GREETING: &str = "Hello World!";

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/", get(hello))
}

/// The greeting, or the page for a browser.
///
/// `Hello World!` as text for every client, unless `Accept` names HTML and ranks it at least as
/// high as plain text (a browser), which gets the live page instead.
#[utoipa::path(
    method(get, head),
    path = "/",
    tag = "hello",
    responses(
        (status = 200, description = "The greeting as text, or the page for a browser",
            content(
                (String = "text/plain", example = json!(GREETING)),
                (String = "text/html"),
            ),
            headers(
                ("Vary" = String, description = "`accept`: the answer depends on it"),
                ("Cache-Control" = String, description = "`private` for the text (it names the replica), `no-store` for the page"),
            )),
    ),
)]
// Takes the whole request to read its `Accept` in place: a `HeaderMap` argument would copy
// every header of the request, the most frequent one.
async fn hello(State(state): State<AppState>, request: Request) -> Response {
    if prefers_html(request.headers().get(header::ACCEPT)) {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(crate::web::CONTENT_SECURITY_POLICY),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::VARY, HeaderValue::from_static("accept")),
            ],
            // Rendered with this replica's name: the page cannot read its own headers.
            crate::web::render_index(
                &state.config.instance_name,
                crate::VERSION,
                state.started.elapsed().as_secs(),
            ),
        )
            .into_response()
    } else {
        // Room for the stamps the middleware adds, so they never grow the map; `Content-Length`
        // given, so it is not formatted for every answer.
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers.insert(header::VARY, HeaderValue::from_static("accept"));
        // The greeting names the replica that answered (`x-served-by`): a shared cache that kept
        // it would show one replica's answer to everyone, hiding the balancing it is there to
        // show. A browser's own cache may keep it.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        let mut response = Response::new(Body::from(GREETING));
        *response.headers_mut() = headers;
        response
    }
}

/// True when `Accept` names HTML explicitly and ranks it at least as high as plain text
/// (wildcards count for text only: `*/*` alone, as curl sends, gets text).
pub fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let mut html = 0.0_f32;
    let mut text = 0.0_f32;
    let mut text_specific = false;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        let quality = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let is = |name: &str| media.eq_ignore_ascii_case(name);
        if is("text/html") || is("application/xhtml+xml") {
            html = html.max(quality);
        } else if is("text/plain") {
            text = if text_specific {
                text.max(quality)
            } else {
                quality
            };
            text_specific = true;
        } else if (is("text/*") || is("*/*")) && !text_specific {
            text = text.max(quality);
        }
    }
    html > 0.0 && html >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn html(accept: &str) -> bool {
        prefers_html(Some(&HeaderValue::from_str(accept).expect("test header")))
    }

    #[test]
    fn browsers_get_html_and_everyone_else_text() {
        assert!(html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(html("text/html"));
        assert!(!html("*/*"));
        assert!(!html("text/plain"));
        assert!(!html("text/plain, text/html;q=0.5"));
        assert!(!html("application/json"));
        assert!(!html("text/html;q=0"));
        assert!(html("TEXT/HTML"));
        assert!(!html("Text/Plain, text/html;q=0.5"));
        assert!(!prefers_html(None));
    }
}
