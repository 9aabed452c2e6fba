//! `GET /`: the seed's contract, `Hello World!` as text, for every client that does not ask
//! for HTML; a browser gets the web page, which shows the same greeting.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};

use super::{AppState, Routes};

pub const GREETING: &str = "Hello World!";

pub(crate) fn routes() -> Routes {
    // The hottest route (bench/RESULTS.md), so answered directly, without the router.
    Routes::default().direct("/", hello)
}

fn hello(state: &AppState, request_headers: &HeaderMap) -> Response {
    if prefers_html(request_headers.get(header::ACCEPT)) {
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
        let mut response = Response::new(Body::from(GREETING));
        *response.headers_mut() = state.greeting_headers.clone();
        response
    }
}

/// The headers of `Hello World!` as text, the answer nearly every request gets, made once
/// (kept in [`AppState`]): `Content-Length` is a constant rather than formatted, and the
/// stamps every answer carries are in already, so [`crate::observe`] only writes the request id.
pub(crate) fn greeting_headers(served_by: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    crate::observe::stamp_in_advance(&mut headers, served_by);
    headers
}

/// True when `Accept` names HTML explicitly and ranks it at least as high as plain text
/// (wildcards count for text only: `*/*` alone, as curl sends, gets text).
fn prefers_html(accept: Option<&HeaderValue>) -> bool {
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
    fn the_greeting_declares_its_own_length() {
        let headers = greeting_headers(&HeaderValue::from_static("replica"));
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            GREETING.len().to_string().as_str()
        );
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
