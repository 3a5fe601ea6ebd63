//! The web console at `/`: one HTML page, its script and its stylesheet,
//! embedded in the binary with `include_str!` and served as they are (no
//! build step, nothing fetched from another origin: the
//! Content-Security-Policy sent with every asset forbids it).
//!
//! The page is a client of the `/v1/` API like any other: it signs in with
//! a tenant's token, keeps it in the tab's `sessionStorage` and sends it as
//! `Authorization: Bearer` on every call, so it sees exactly what that
//! tenant may see. Not here: the data it shows (`openai` for jobs, events
//! and checkpoints; `series` for training curves and the worker list).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::super::Coordinator;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// Everything comes from this origin; scripts and styles only from files
/// (no inline code), downloads as `blob:` URLs, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Coordinator> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(stylesheet))
}

async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `body` with its type and the headers every console asset carries.
/// `no-cache`: a browser checks again, so a new coordinator's console
/// never runs beside an old one's script.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body)
}

#[cfg(test)]
mod tests {
    use axum::response::Response;

    use super::*;

    fn header_of(response: &Response, name: HeaderName) -> &str {
        response.headers()[name].to_str().unwrap()
    }

    #[tokio::test]
    async fn assets_carry_their_types_and_a_policy_without_other_origins() {
        let cases = [
            (index().await.into_response(), "text/html"),
            (script().await.into_response(), "text/javascript"),
            (stylesheet().await.into_response(), "text/css"),
        ];
        for (response, kind) in cases {
            assert_eq!(response.status(), 200);
            assert!(header_of(&response, header::CONTENT_TYPE).starts_with(kind));
            assert_eq!(
                header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
            let policy = header_of(&response, header::CONTENT_SECURITY_POLICY);
            assert!(policy.starts_with("default-src 'none'"), "{policy}");
            for directive in policy.split(';') {
                let sources: Vec<&str> = directive.split_whitespace().skip(1).collect();
                for source in sources {
                    assert!(
                        ["'self'", "'none'", "data:", "blob:"].contains(&source),
                        "{source} in {policy}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for url in ["/console/app.js", "/console/app.css"] {
            assert!(INDEX_HTML.contains(&format!("\"{url}\"")), "{url}");
        }
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            // The SVG namespace is a name, not an address the page loads.
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            // No inline script or style for the policy to refuse.
            assert!(!text.contains("<script>") && !text.contains("style=\""));
        }
    }
}
