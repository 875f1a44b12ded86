//! The web pages of `dtasks-axum` in a real browser: Chromium, headless, driven through
//! chromedriver (WebDriver) with `fantoccini`. The test starts chromedriver itself on a
//! free port, serves the pages and the routes on 127.0.0.1, starts instances, sees them
//! listed (and one started later appear without a reload), filters the list, opens an
//! instance, cancels it and signals another from their pages, checks that markup in a
//! result is shown as text, and opens a root with recorded children: its timeline, a
//! click through to a child and back to the parent. Once on RabbitMQ (`AMQP_URL`) with a worker in this process,
//! once on the in-memory runtime.
//!
//! It needs `chromedriver` and Chromium (Debian: `apt-get install -y chromium
//! chromium-driver`; `.ci/run` installs them). `CHROMEDRIVER` and `CHROME_BIN` name other
//! binaries. Without them the test fails; it never skips.
//!
//! The screenshots in `docs/` (`web-list.png`, `web-instance.png`) are taken by the
//! in-memory test; to write them again:
//! `DTASKS_WRITE_SCREENSHOTS=1 cargo test -p dtasks-integration-tests --test web_pages in_memory`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use dtasks::{dtask, Client, DTask, InstanceId, Runtime, Status};
use dtasks_axum::Api;
use dtasks_integration_tests::http::{app, config, double, fails, gated, serve, sleeper};
use dtasks_integration_tests::Broker;
use fantoccini::{ClientBuilder, Locator};
use futures::FutureExt as _;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// How long the page may take to show what the test waits for (a refresh is every 2 s).
const PATIENCE: Duration = Duration::from_secs(30);

/// What its result says is markup; the page must show it as text.
const MARKUP: &str = "<script>alert('dtasks')</script>";

/// Answers with markup.
#[dtask(name = "it_web.markup")]
async fn markup() -> String {
    MARKUP.to_string()
}

/// Three children, then the event `go`; started by a client that records children.
#[dtask(name = "it_web.tree")]
async fn tree() -> u64 {
    let parts = DTask::when_all((1..=3).map(double)).await;
    let go: u64 = DTask::event("go").await;
    parts.iter().sum::<u64>() + go
}

/// Chromium, headless, behind a chromedriver this test started (killed on drop).
struct Browser {
    driver: Child,
    web: fantoccini::Client,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run `{driver_bin}`: the browser test needs chromedriver and \
                     Chromium (Debian: apt-get install -y chromium chromium-driver)"
                )
            })?;
        // `--disable-dev-shm-usage`: containers often give /dev/shm 64 MB, which Chromium
        // outgrows and then crashes.
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000", "--hide-scrollbars"],
        });
        let chrome = std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if Path::new(&chrome).exists() {
            options["binary"] = json!(chrome);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let begun = Instant::now();
        let web = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(web) => break web,
                Err(e) if begun.elapsed() < PATIENCE => {
                    tracing::debug!("chromedriver not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("no browser session from {driver_bin} at {url}: {e}"),
            }
        };
        Ok(Self { driver, web })
    }

    /// Runs `script` in the page (its arguments in `args`) and returns what it returns.
    async fn js(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        Ok(self.web.execute(script, args).await?)
    }

    /// The text of the first element `css` selects, or `None`.
    async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let found = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await?;
        Ok(found.as_str().map(str::to_string))
    }

    /// The attribute `name` of the first element `css` selects, or `None`.
    async fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        let found = self
            .js(
                "const e = document.querySelector(arguments[0]); \
                 return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await?;
        Ok(found.as_str().map(str::to_string))
    }

    /// Waits until `check` holds of the page, reading it again and again (the page
    /// refreshes itself; the test never reloads it unless it says so).
    async fn until<F, Fut>(&self, what: &str, mut check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let begun = Instant::now();
        loop {
            if check().await? {
                return Ok(());
            }
            if begun.elapsed() > PATIENCE {
                let page = self.web.source().await.unwrap_or_default();
                bail!("the page never showed {what} within {PATIENCE:?}; it shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the status badge of the instance page says `status`.
    async fn until_status(&self, status: &str) -> anyhow::Result<()> {
        self.until(&format!("the status {status}"), || async {
            Ok(self
                .attr(".facts [data-status]", "data-status")
                .await?
                .as_deref()
                == Some(status))
        })
        .await
    }

    /// A screenshot of the window, as PNG; written to `docs/{name}` when
    /// `DTASKS_WRITE_SCREENSHOTS` is set.
    async fn screenshot(&self, name: &str) -> anyhow::Result<()> {
        let png = self.web.screenshot().await?;
        ensure!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "a screenshot is not a PNG"
        );
        if std::env::var_os("DTASKS_WRITE_SCREENSHOTS").is_some() {
            let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "docs", name]
                .iter()
                .collect();
            std::fs::write(&path, &png).with_context(|| format!("writing {path:?}"))?;
        }
        Ok(())
    }

    async fn close(mut self) -> anyhow::Result<()> {
        self.web.close().await?;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// The scenario, against pages at `base` that show what `client` starts.
async fn scenario(client: &Client, base: &str, screenshots: bool) -> anyhow::Result<()> {
    let id = |s: &str| InstanceId::new(s).expect("a valid id");
    client.start_with_id(id("web-gated"), gated(1)).await?;
    client.start_with_id(id("web-sleeper"), sleeper(2)).await?;
    let failed = client.start_with_id(id("web-fails"), fails(3)).await?;
    let doubled = client.start_with_id(id("web-double"), double(4)).await?;
    let marked = client.start_with_id(id("web-markup"), markup()).await?;
    assert_eq!(doubled.result().await?, 8);
    assert!(failed.result().await.unwrap_err().is_failed());
    assert_eq!(marked.result().await?, MARKUP);

    let b = Browser::start().await?;
    // The browser is closed whatever happens, a failed assertion too: Chromium is a child
    // of chromedriver and would outlive it.
    let outcome = AssertUnwindSafe(drive(&b, client, base, screenshots))
        .catch_unwind()
        .await;
    let closed = b.close().await;
    match outcome {
        Ok(outcome) => outcome?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    closed
}

async fn drive(b: &Browser, client: &Client, base: &str, screenshots: bool) -> anyhow::Result<()> {
    let row = |id: &str| format!("tr[data-id='{id}'] [data-status]");

    // The list: every instance, with its status once the workers reported it.
    b.web.goto(&format!("{base}/ui")).await?;
    b.until("the instances listed with their statuses", || async {
        Ok(
            b.attr(&row("web-gated"), "data-status").await?.as_deref() == Some("suspended")
                && b.attr(&row("web-sleeper"), "data-status").await?.as_deref()
                    == Some("suspended")
                && b.attr(&row("web-fails"), "data-status").await?.as_deref() == Some("failed")
                && b.attr(&row("web-double"), "data-status").await?.as_deref() == Some("succeeded"),
        )
    })
    .await?;
    let waits = b.text("tr[data-id='web-gated'] td:nth-child(4)").await?;
    assert_eq!(waits.as_deref(), Some("the event go"));

    // Live: an instance started now shows up without a reload (the marker survives).
    b.js("window.dtasksMarker = 'still here'; return null;", vec![])
        .await?;
    client.start_with_id(id_of("web-late"), double(21)).await?;
    b.until("the instance started after the page loaded", || async {
        Ok(b.attr(&row("web-late"), "data-status").await?.as_deref() == Some("succeeded"))
    })
    .await?;
    let marker = b.js("return window.dtasksMarker || null;", vec![]).await?;
    assert_eq!(
        marker,
        json!("still here"),
        "the list was reloaded, not refreshed"
    );
    if screenshots {
        b.screenshot("web-list.png").await?;
    }

    // The filter: suspended ones only.
    b.web
        .find(Locator::Css("input[name='status'][value='suspended']"))
        .await?
        .click()
        .await?;
    b.web
        .find(Locator::Css("form.filters button[type='submit']"))
        .await?
        .click()
        .await?;
    b.until("the list filtered by status", || async {
        let url = b.web.current_url().await?;
        let statuses = b
            .js(
                "return [...document.querySelectorAll('tr[data-id] [data-status]')]\
                 .map(e => e.getAttribute('data-status'));",
                vec![],
            )
            .await?;
        Ok(url.query()
            == Some("status=suspended&name=&prefix=&since=&until=&show=roots&parent=&limit=")
            && statuses == json!(["suspended", "suspended"]))
    })
    .await?;

    // An instance's page, from its link: what it waits for, then cancelled from the page.
    b.web
        .find(Locator::Css("tr[data-id='web-sleeper'] a"))
        .await?
        .click()
        .await?;
    b.until_status("suspended").await?;
    assert_eq!(b.text("h1").await?.as_deref(), Some("web-sleeper"));
    let waits = b.text(".facts .waits").await?.unwrap_or_default();
    assert_eq!(waits.matches("a timer due at").count(), 2, "{waits}");
    b.web
        .find(Locator::Css("form.cancel input[name='reason']"))
        .await?
        .send_keys("no longer needed")
        .await?;
    b.web
        .find(Locator::Css("form.cancel button"))
        .await?
        .click()
        .await?;
    b.until_status("cancelled").await?;
    b.until("the page without its forms", || async {
        Ok(b.text("form.cancel").await?.is_none() && b.text(".failure code").await?.is_some())
    })
    .await?;
    assert_eq!(b.text(".failure code").await?.as_deref(), Some("cancelled"));
    let message = b.text("pre.message").await?.unwrap_or_default();
    assert!(message.contains("no longer needed"), "{message}");
    let info = client.instance(&id_of("web-sleeper")).await?;
    assert_eq!(info.status, Status::Cancelled);

    // Another page: the event form offers the event it waits for; send it a value.
    b.web
        .goto(&format!("{base}/ui/instances/web-gated"))
        .await?;
    b.until_status("suspended").await?;
    let event = b.attr("form.signal input[name='event']", "value").await?;
    assert_eq!(event.as_deref(), Some("go"));
    let value = b
        .web
        .find(Locator::Css("form.signal textarea[name='value']"))
        .await?;
    value.clear().await?;
    value.send_keys("5").await?;
    b.web
        .find(Locator::Css("form.signal button"))
        .await?
        .click()
        .await?;
    b.until_status("succeeded").await?;
    assert_eq!(
        b.text(".notice").await?.as_deref(),
        Some("Event `go` sent.")
    );
    b.until("the result", || async {
        Ok(b.text("pre.value").await?.as_deref() == Some("7"))
    })
    .await?;

    // Markup in a result is text on the page: no script of it runs or exists.
    b.web
        .goto(&format!("{base}/ui/instances/web-markup"))
        .await?;
    b.until_status("succeeded").await?;
    let shown = b.text("pre.value").await?;
    assert_eq!(shown, Some(format!("\"{MARKUP}\"")));
    let scripts = b
        .js("return document.querySelectorAll('script').length;", vec![])
        .await?;
    assert_eq!(scripts, json!(1), "only the page's own script");
    assert!(
        b.web.get_alert_text().await.is_err(),
        "an alert is open: the result ran as a script"
    );

    tree_pages(b, client, base, screenshots).await
}

/// A root with recorded children: the timeline, its children linked, a click through to
/// a child and back to the parent; the list shows it but not its children.
async fn tree_pages(
    b: &Browser,
    client: &Client,
    base: &str,
    screenshots: bool,
) -> anyhow::Result<()> {
    let recording = client.clone().recording_children();
    let root = recording.start_with_id(id_of("web-tree"), tree()).await?;
    b.web.goto(&format!("{base}/ui/instances/web-tree")).await?;
    b.until(
        "the tree waiting for its event, its children done",
        || async {
            let children = b
                .js(
                    "return [...document.querySelectorAll('table.children tr[data-id]')]\
                 .map(r => [r.getAttribute('data-id'), \
                 r.querySelector('[data-status]').getAttribute('data-status')]);",
                    vec![],
                )
                .await?;
            let waits = b.text(".facts .waits").await?.unwrap_or_default();
            Ok(waits.contains("the event go")
                && children
                    == json!([
                        ["web-tree.2", "succeeded"],
                        ["web-tree.1", "succeeded"],
                        ["web-tree.0", "succeeded"]
                    ]))
        },
    )
    .await?;
    // The timeline: started, the fan-out, the first suspension, the event's step, the
    // suspension for the event.
    let items = b
        .js(
            "return [...document.querySelectorAll('ol.timeline li')]\
             .map(li => [li.className, li.textContent]);",
            vec![],
        )
        .await?;
    let items: Vec<(String, String)> = serde_json::from_value(items)?;
    let kinds: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["change", "step", "change", "step", "change"],
        "{items:?}"
    );
    assert!(items[0].1.contains("started"), "{items:?}");
    assert!(
        items[1]
            .1
            .contains("steps 0–2 3 children of it_http.double: done"),
        "{items:?}"
    );
    assert!(
        items[2]
            .1
            .contains("suspended, waiting for the results of 3 children"),
        "{items:?}"
    );
    assert!(
        items[3]
            .1
            .contains("step 3 waits for the event go: waiting"),
        "{items:?}"
    );
    assert!(
        items[4].1.contains("suspended, waiting for the event go"),
        "{items:?}"
    );
    if screenshots {
        b.screenshot("web-instance.png").await?;
    }

    // To a child and back.
    b.web
        .find(Locator::Css(
            "table.children a[href$='/ui/instances/web-tree.1']",
        ))
        .await?
        .click()
        .await?;
    b.until_status("succeeded").await?;
    assert_eq!(b.text("h1").await?.as_deref(), Some("web-tree.1"));
    assert_eq!(
        b.text(".facts a.parent").await?.as_deref(),
        Some("web-tree")
    );
    b.until("the child's result", || async {
        Ok(b.text("pre.value").await?.as_deref() == Some("4"))
    })
    .await?;
    b.web
        .find(Locator::Css(".facts a.parent"))
        .await?
        .click()
        .await?;
    b.until_status("suspended").await?;
    assert_eq!(b.text("h1").await?.as_deref(), Some("web-tree"));

    // The list shows roots: the tree, not its children; asked, its children alone.
    b.web.goto(&format!("{base}/ui")).await?;
    b.until("the tree listed", || async {
        Ok(b.text("tr[data-id='web-tree']").await?.is_some())
    })
    .await?;
    assert!(b.text("tr[data-id='web-tree.0']").await?.is_none());
    b.web.goto(&format!("{base}/ui?parent=web-tree")).await?;
    b.until("the children listed", || async {
        let ids = b
            .js(
                "return [...document.querySelectorAll('tr[data-id]')]\
                 .map(r => r.getAttribute('data-id')).sort();",
                vec![],
            )
            .await?;
        Ok(ids == json!(["web-tree.0", "web-tree.1", "web-tree.2"]))
    })
    .await?;

    client.signal(root.id(), "go", &1u64).await?;
    assert_eq!(root.result().await?, 2 + 4 + 6 + 1);
    Ok(())
}

fn id_of(s: &str) -> InstanceId {
    InstanceId::new(s).expect("a valid id")
}

/// On RabbitMQ: a worker in this process, the RabbitMQ-only store, the pages served by
/// a client of its own.
#[tokio::test(flavor = "multi_thread")]
async fn on_rabbitmq() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let workers = broker
        .workers_with(1, config().register(markup).register(tree))
        .await?;
    let client = broker.client().await?;
    let api = Api::new(client.clone());
    let base = serve(app(api.clone()).merge(api.pages())).await?;
    let outcome = scenario(&client, &base, false).await;
    workers.stop().await?;
    outcome?;
    broker.cleanup().await
}

/// On the in-memory runtime; takes the screenshots.
#[tokio::test(flavor = "multi_thread")]
async fn in_memory() -> anyhow::Result<()> {
    let rt = Runtime::new(config().register(markup).register(tree))?;
    let client = rt.client();
    let api = Api::new(client.clone());
    let base = serve(app(api.clone()).merge(api.pages())).await?;
    let outcome = scenario(&client, &base, true).await;
    rt.shutdown().await?;
    outcome
}
