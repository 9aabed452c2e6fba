//! The page a browser gets from `GET /`: one self-contained HTML file embedded in the binary.

/// The page.
pub const INDEX_HTML: &str = include_str!("web/index.html");

/// The Content-Security-Policy sent with the page; the page satisfies it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; connect-src 'self'; \
    img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";
