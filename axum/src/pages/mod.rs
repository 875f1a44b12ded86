//! The web pages of [`Api::pages`]: a list of instances and a page per instance, served
//! as plain HTML by the routes themselves.
//!
//! Rendered on the server with `format!` and one escaping function ([`html`]): no
//! template engine, no build step, no JavaScript framework. A page is a function of what
//! the store answers, so it reads top to bottom as the HTML it sends. The forms post to
//! routes of their own that answer with a redirect back to the page, so that signalling
//! and cancelling work without any script. One small script (`live.js`) reads the page
//! again every few seconds and swaps in its changing part; without it, the pages still
//! work and are reloaded by hand.

mod html;
mod instance;
mod list;
mod timeline;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::api::Api;

/// The stylesheet of every page.
const PAGE_CSS: &str = include_str!("page.css");

/// The live refresh of every page.
const LIVE_JS: &str = include_str!("live.js");

impl Api {
    /// The web pages, to merge into an application's router next to [`Api::routes`] (or
    /// nest under the path given to [`Api::with_base_path`]):
    ///
    /// | method and path | what |
    /// |---|---|
    /// | `GET /ui` | the roots (`show=all`: children too; `parent=ID`: the children of `ID`), newest first, filtered by status, DTask name, id prefix and start time (`since`, `until`: a duration before now such as `15m`, RFC 3339, or milliseconds), a page at a time; read again every 2 s |
    /// | `GET /ui/instances/{id}` | one instance: status, what it waits for, a timeline (start, each status change a worker reported, the journal's steps between them, timers ahead), its parent and its children when the store holds them (linked), the result or failure, and the forms below; read again every 2 s while it runs |
    /// | `POST /ui/instances/{id}/signal` | the form `event`, `value` (JSON; empty: `null`) sends the event, then redirects (303) to the page |
    /// | `POST /ui/instances/{id}/cancel` | the form `reason` (optional) cancels, then redirects (303) to the page |
    /// | `GET /ui/assets/page.css`, `GET /ui/assets/live.js` | the stylesheet and the refresh script |
    ///
    /// The pages are plain HTML rendered on the server; everything they show that comes
    /// from instances (ids, names, results, failures, event names) is escaped. They are
    /// served with a content security policy that runs no inline script and lets no
    /// other site frame them, and the two forms refuse requests a browser sends from
    /// another site (`Sec-Fetch-Site`, or `Origin` against `Host`). They check nobody's
    /// identity: anyone who reaches them can signal and cancel instances, so put them
    /// behind the application's own authentication (an axum layer) where that matters.
    ///
    /// ```
    /// use axum::Router;
    /// use dtasks::{Runtime, WorkerConfig};
    /// use dtasks_axum::Api;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> anyhow::Result<()> {
    /// let rt = Runtime::new(WorkerConfig::new().register(dtasks_axum::webhook))?;
    /// let api = Api::new(rt.client());
    /// let app: Router = Router::new().merge(api.routes()).merge(api.pages());
    /// # let _ = app;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn pages<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/ui", get(list::list_page))
            .route("/ui/instances/{id}", get(instance::instance_page))
            .route("/ui/instances/{id}/signal", post(instance::signal))
            .route("/ui/instances/{id}/cancel", post(instance::cancel))
            .route("/ui/assets/page.css", get(css))
            .route("/ui/assets/live.js", get(js))
            .with_state(self.clone())
    }
}

async fn css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

async fn js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", LIVE_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
