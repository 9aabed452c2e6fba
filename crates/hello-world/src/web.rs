//! The page a browser gets from `GET /`: one self-contained HTML file embedded in the binary,
//! and the Content-Security-Policy it is served with.
//!
//! The page (`web/index.html`) has one inline `<style>` and one inline `<script>` and nothing
//! else to load. The policy allows exactly those two by their SHA-256 (`'sha256-…'` sources),
//! so no `'unsafe-inline'` is needed and an injected script or style would not run.
//!
//! The hashes are literal text in [`CONTENT_SECURITY_POLICY`], checked by a unit test that
//! recomputes them from the page: editing the page without updating the policy fails
//! `cargo test` with the line to paste. This was preferred over a `build.rs` that computes them:
//! the policy stays readable in one place, and the release build (the image) carries no build
//! script and no hashing crates; the cost is one test, which CI runs anyway.
//!
//! The page can be served as is ([`INDEX_HTML`]), or with the serving replica filled in by
//! [`render_index`]. A script cannot read the headers of its own page, so only the rendered
//! page can say which replica served it; the plain one shows the first replica that answers
//! `/api/info` and says so.

/// The page, as written. Its `hello-*` meta tags are empty: see [`render_index`].
pub const INDEX_HTML: &str = include_str!("web/index.html");

/// The Content-Security-Policy sent with the page; the page satisfies it.
///
/// `connect-src 'self'` is all the page's script needs (`/api/info`, `/api/counter`);
/// `img-src data:` is for the inline favicon, which also saves a `/favicon.ico` request.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
    script-src 'sha256-UWcS/EdPukcz7RQRGLHcMiNfsSGxUe6MVX+mpRkHsBs='; \
    style-src 'sha256-B1pw9UCvAuR4seoAwgfCi1aotXVSYUcLprPgKxClahI='; \
    connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The meta tags [`render_index`] fills; the page's script reads them.
const INSTANCE_META: &str = r#"<meta name="hello-instance" content="">"#;
const VERSION_META: &str = r#"<meta name="hello-version" content="">"#;
const UPTIME_META: &str = r#"<meta name="hello-uptime" content="">"#;

/// The page with the serving replica's name, version and uptime filled in, so it can say
/// "this page was served by". Only `<meta>` attributes change, never the script or the style,
/// so the page still matches [`CONTENT_SECURITY_POLICY`].
pub fn render_index(instance: &str, version: &str, uptime_seconds: u64) -> String {
    let mut page = String::with_capacity(INDEX_HTML.len() + 256);
    let mut rest = INDEX_HTML;
    for (placeholder, value) in [
        (INSTANCE_META, escape_attribute(instance)),
        (VERSION_META, escape_attribute(version)),
        (UPTIME_META, uptime_seconds.to_string()),
    ] {
        // The placeholders appear once each, in this order (a unit test holds the page to it).
        let Some(at) = rest.find(placeholder) else {
            continue;
        };
        let (before, after) = rest.split_at(at);
        page.push_str(before);
        // Keep everything up to `content="` and put the value before the closing quote.
        let open = placeholder.len() - r#"">"#.len();
        page.push_str(&placeholder[..open]);
        page.push_str(&value);
        page.push_str(&placeholder[open..]);
        rest = &after[placeholder.len()..];
    }
    page.push_str(rest);
    page
}

/// Escapes text for a double-quoted HTML attribute value.
fn escape_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use sha2::Digest as _;

    use super::*;

    /// The text between `<tag>` and `</tag>`, asserting the page has exactly one such element
    /// and that it has no attributes (a `nonce` or `src` would change what the hash covers).
    fn only_element<'a>(page: &'a str, tag: &str) -> &'a str {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        assert_eq!(
            page.matches(&open).count(),
            1,
            "the page must have exactly one {open}"
        );
        assert_eq!(
            page.matches(&close).count(),
            1,
            "the page must have exactly one {close}"
        );
        assert_eq!(
            page.matches(&format!("<{tag}")).count(),
            1,
            "no other <{tag} element (with attributes) may exist"
        );
        let start = page.find(&open).expect("counted above") + open.len();
        let end = page.find(&close).expect("counted above");
        &page[start..end]
    }

    fn csp_hash(text: &str) -> String {
        let digest = sha2::Sha256::digest(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style_of_the_page() {
        let script = csp_hash(only_element(INDEX_HTML, "script"));
        let style = csp_hash(only_element(INDEX_HTML, "style"));
        let expected = format!("script-src {script}; style-src {style};");
        let policy = CONTENT_SECURITY_POLICY
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            policy.contains(&expected),
            "web/index.html changed: put `{expected}` into CONTENT_SECURITY_POLICY (found `{policy}`)"
        );
        assert!(
            !policy.contains("unsafe-inline"),
            "the policy must not fall back to 'unsafe-inline'"
        );
        assert!(
            policy.starts_with("default-src 'none';"),
            "anything not listed stays forbidden"
        );
    }

    #[test]
    fn the_page_has_nothing_the_policy_would_block() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        // Inline handlers and style attributes are not covered by the hashes.
        for (at, _) in lower.match_indices("on") {
            let after_space = lower[..at].ends_with(|c: char| c.is_ascii_whitespace());
            let word: String = lower[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let next = lower[at + word.len()..].chars().next();
            assert!(
                !(after_space && word.len() > 2 && next == Some('=')),
                "inline event handler attribute `{word}=` in the page"
            );
        }
        assert!(!lower.contains("style=\""), "style attribute in the page");
        // Server data is only ever set as text.
        assert!(
            !lower.contains("innerhtml"),
            "the page must not use innerHTML"
        );
        assert!(
            !lower.contains("insertadjacenthtml"),
            "the page must not parse HTML strings"
        );
        // Nothing is loaded from elsewhere: every link target is this origin or inline data.
        for attribute in ["src=\"", "href=\""] {
            for (at, _) in lower.match_indices(attribute) {
                let target = &lower[at + attribute.len()..];
                assert!(
                    target.starts_with('/') || target.starts_with("data:"),
                    "external reference `{}` in the page",
                    &target[..target.find('"').unwrap_or(target.len())]
                );
            }
        }
    }

    #[test]
    fn the_rendered_page_names_the_replica_and_keeps_its_hashes() {
        let page = render_index("hello-world.2.abc", "1.2.3", 42);
        assert!(page.contains(r#"<meta name="hello-instance" content="hello-world.2.abc">"#));
        assert!(page.contains(r#"<meta name="hello-version" content="1.2.3">"#));
        assert!(page.contains(r#"<meta name="hello-uptime" content="42">"#));
        assert_eq!(
            only_element(&page, "script"),
            only_element(INDEX_HTML, "script")
        );
        assert_eq!(
            only_element(&page, "style"),
            only_element(INDEX_HTML, "style")
        );
        assert_eq!(
            page.len(),
            INDEX_HTML.len() + "hello-world.2.abc1.2.342".len()
        );
    }

    #[test]
    fn the_page_offers_each_placeholder_once_in_render_order() {
        let at = |needle: &str| {
            assert_eq!(
                INDEX_HTML.matches(needle).count(),
                1,
                "{needle} must appear once"
            );
            INDEX_HTML.find(needle).expect("counted above")
        };
        assert!(at(INSTANCE_META) < at(VERSION_META));
        assert!(at(VERSION_META) < at(UPTIME_META));
    }

    #[test]
    fn replica_names_cannot_break_out_of_the_attribute() {
        let page = render_index(r#""><script>alert(1)</script>"#, "v'1&", 0);
        assert!(page.contains(r#"content="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">"#));
        assert!(page.contains(r#"content="v&#39;1&amp;">"#));
        assert_eq!(page.matches("<script>").count(), 1);
    }
}
