//! The web pages without a browser: what they show is escaped, their forms answer with
//! redirects, and forms of other sites are refused (`integration-tests/tests/web_pages.rs`
//! drives them in a real browser).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use dtasks::{dtask, DTask, InstanceId, Runtime, WorkerConfig};
use dtasks_axum::Api;
use tower::ServiceExt as _;

const SCRIPT: &str = "<script>alert(1)</script>";

/// Answers with markup of its own.
#[dtask(name = "pages_test.markup")]
async fn markup() -> String {
    SCRIPT.to_string()
}

/// Fails with markup in its message.
#[dtask(name = "pages_test.fails")]
async fn fails(x: u32) -> u32 {
    if x > 0 {
        panic!("<img src=x onerror=alert({x})>");
    }
    x
}

/// Waits for the event `go`.
#[dtask(name = "pages_test.gated")]
async fn gated() -> u64 {
    DTask::event::<u64>("go").await
}

fn service() -> anyhow::Result<(Runtime, Router)> {
    let config = WorkerConfig::new()
        .register(markup)
        .register(fails)
        .register(gated);
    let rt = Runtime::new(config)?;
    let api = Api::new(rt.client());
    let app = Router::new().merge(api.routes()).merge(api.pages());
    Ok((rt, app))
}

async fn get(app: &Router, uri: &str) -> anyhow::Result<(StatusCode, String)> {
    let answer = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 22).await?;
    Ok((status, String::from_utf8(body.to_vec())?))
}

async fn post_form(
    app: &Router,
    uri: &str,
    form: &'static str,
    origin: Option<&'static str>,
) -> anyhow::Result<(StatusCode, Option<String>, String)> {
    let mut req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "127.0.0.1:3000");
    if let Some(origin) = origin {
        req = req.header(header::ORIGIN, origin);
    }
    let answer = app.clone().oneshot(req.body(Body::from(form))?).await?;
    let status = answer.status();
    let location = answer
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let body = axum::body::to_bytes(answer.into_body(), 1 << 22).await?;
    Ok((status, location, String::from_utf8(body.to_vec())?))
}

/// Fails unless `page` shows `text` escaped and never as markup.
fn shows_escaped(page: &str, text: &str) {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    assert!(
        page.contains(&escaped),
        "`{escaped}` is not on the page:\n{page}"
    );
    assert!(
        !page.contains(text),
        "`{text}` is on the page as markup:\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_instances_say_is_escaped() -> anyhow::Result<()> {
    let (rt, app) = service()?;
    let client = rt.client();

    let h = client
        .start_with_id(InstanceId::new("markup-1")?, markup())
        .await?;
    assert_eq!(h.result().await?, SCRIPT);
    let (status, page) = get(&app, "/ui/instances/markup-1").await?;
    assert_eq!(status, StatusCode::OK);
    shows_escaped(&page, &format!("\"{SCRIPT}\""));
    assert!(page.contains(r#"data-status="succeeded""#));
    let (_, list) = get(&app, "/ui").await?;
    assert!(list.contains(r#"<tr data-id="markup-1">"#), "{list}");

    let h = client.start(fails(7)).await?;
    assert!(h.result().await.unwrap_err().is_failed());
    let (_, page) = get(&app, &format!("/ui/instances/{}", h.id())).await?;
    shows_escaped(&page, "<img src=x onerror=alert(7)>");
    assert!(page.contains("<code>panic</code>"), "{page}");

    // An id is checked before anything is read, and the refusal quotes it escaped.
    let (status, page) = get(&app, "/ui/instances/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    shows_escaped(&page, SCRIPT);
    // So are the filters of the list, given back in its form.
    let (status, page) = get(&app, "/ui?name=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await?;
    assert_eq!(status, StatusCode::OK);
    shows_escaped(&page, SCRIPT);
    let (status, page) = get(&app, "/ui?status=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    shows_escaped(&page, SCRIPT);

    // The event name a form sent comes back in the notice, escaped.
    client
        .start_with_id(InstanceId::new("gated-1")?, gated())
        .await?;
    let (_, page) = get(
        &app,
        "/ui/instances/gated-1?sent=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    )
    .await?;
    shows_escaped(&page, SCRIPT);
    rt.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_signal_and_cancel_then_redirect() -> anyhow::Result<()> {
    let (rt, app) = service()?;
    let client = rt.client();
    let id = InstanceId::new("gated-2")?;
    let h = client.start_with_id(id.clone(), gated()).await?;
    // Wait until it waits for its event: the page offers that event in the form.
    let mut page = String::new();
    for _ in 0..200 {
        page = get(&app, "/ui/instances/gated-2").await?.1;
        if page.contains(r#"value="go""#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(page.contains("the event <code>go</code>"), "{page}");
    assert!(page.contains(r#"data-finished="false""#));

    let (status, _, page) = post_form(
        &app,
        "/ui/instances/gated-2/signal",
        "event=go&value=not+json",
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("The value is not JSON"), "{page}");

    let (status, _, page) = post_form(
        &app,
        "/ui/instances/gated-2/signal",
        "event=go&value=20",
        Some("https://elsewhere.example"),
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");

    let (status, location, _) = post_form(
        &app,
        "/ui/instances/gated-2/signal",
        "event=go&value=20",
        Some("http://127.0.0.1:3000"),
    )
    .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/ui/instances/gated-2?sent=go"));
    assert_eq!(h.result().await?, 20);
    let (_, page) = get(&app, "/ui/instances/gated-2?sent=go").await?;
    assert!(page.contains("Event `go` sent."), "{page}");
    assert!(page.contains(r#"data-finished="true""#));
    assert!(
        !page.contains("<form class=\"cancel\""),
        "a finished instance has no forms"
    );

    // A cancellation of a finished instance is refused on its page.
    let (status, _, page) =
        post_form(&app, "/ui/instances/gated-2/cancel", "reason=late", None).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(page.contains("has finished"), "{page}");

    let h = client
        .start_with_id(InstanceId::new("gated-3")?, gated())
        .await?;
    let (status, location, _) =
        post_form(&app, "/ui/instances/gated-3/cancel", "reason=", None).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some("/ui/instances/gated-3?cancelled=1")
    );
    let failure = h.result().await.unwrap_err();
    assert!(failure.failure().is_some_and(|f| f.is_cancelled()));
    let (_, page) = get(&app, "/ui/instances/gated-3").await?;
    assert!(page.contains(r#"data-status="cancelled""#), "{page}");
    assert!(page.contains("cancelled from the web page"), "{page}");

    // The assets, and the headers of a page.
    let answer = app
        .clone()
        .oneshot(Request::get("/ui").body(Body::empty())?)
        .await?;
    let csp = answer.headers()[header::CONTENT_SECURITY_POLICY].to_str()?;
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    let (status, js) = get(&app, "/ui/assets/live.js").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("getElementById(\"live\")"));
    rt.shutdown().await?;
    Ok(())
}

/// Pages nested under a path of their own link there, and their forms lead back there.
#[tokio::test(flavor = "multi_thread")]
async fn pages_under_a_base_path() -> anyhow::Result<()> {
    let rt = Runtime::new(WorkerConfig::new().register(gated))?;
    let api = Api::new(rt.client()).with_base_path("/ops");
    let app = Router::new().nest("/ops", api.routes().merge(api.pages()));
    rt.client()
        .start_with_id(InstanceId::new("gated-4")?, gated())
        .await?;
    let (status, list) = get(&app, "/ops/ui").await?;
    assert_eq!(status, StatusCode::OK);
    for link in [
        r#"href="/ops/ui/assets/page.css""#,
        r#"src="/ops/ui/assets/live.js""#,
        r#"href="/ops/ui/instances/gated-4""#,
        r#"action="/ops/ui""#,
        r#"href="/ops/instances?roots=true">As JSON"#,
    ] {
        assert!(list.contains(link), "no {link} in:\n{list}");
    }
    let (status, page) = get(&app, "/ops/ui/instances/gated-4").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"action="/ops/ui/instances/gated-4/cancel""#));
    assert!(page.contains(r#"href="/ops/instances/gated-4/result""#));
    let (status, location, _) =
        post_form(&app, "/ops/ui/instances/gated-4/cancel", "reason=x", None).await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some("/ops/ui/instances/gated-4?cancelled=1")
    );
    let (status, _) = get(&app, "/ops/ui/assets/page.css").await?;
    assert_eq!(status, StatusCode::OK);
    rt.shutdown().await?;
    Ok(())
}

/// The list a page at a time: the next page's link keeps the filters.
#[tokio::test(flavor = "multi_thread")]
async fn the_list_pages_with_its_filters() -> anyhow::Result<()> {
    let (rt, app) = service()?;
    for i in 0..3 {
        let id = InstanceId::new(format!("page-{i}"))?;
        rt.client()
            .start_with_id(id, fails(0))
            .await?
            .result()
            .await?;
    }
    rt.client()
        .start_with_id(InstanceId::new("other-0")?, fails(0))
        .await?
        .result()
        .await?;
    let (status, first) = get(&app, "/ui?prefix=page-&status=succeeded&limit=2").await?;
    assert_eq!(status, StatusCode::OK);
    let rows = |page: &str| page.matches("<tr data-id=").count();
    assert_eq!(rows(&first), 2, "{first}");
    assert!(!first.contains("other-0"));
    let start = first.find(r#"<a rel="next" href=""#).expect("a next page") + 20;
    let next = &first[start..start + first[start..].find('"').unwrap()];
    let next = next.replace("&amp;", "&");
    assert!(
        next.starts_with("/ui?status=succeeded&prefix=page-&limit=2&cursor="),
        "{next}"
    );
    let (status, second) = get(&app, &next).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&second), 1, "{second}");
    assert!(
        second.contains(r#"<tr data-id="page-0">"#),
        "newest first: {second}"
    );
    assert!(!second.contains(r#"rel="next""#));
    rt.shutdown().await?;
    Ok(())
}

#[dtask(name = "pages_test.leaf")]
async fn leaf(x: u64) -> u64 {
    x + 1
}

/// A side effect, two children, then the event `go`.
#[dtask(name = "pages_test.tree")]
async fn tree() -> u64 {
    let base: u64 = DTask::run(|| async { 5 }).await;
    let both: u64 = DTask::when_all([leaf(1), leaf(2)]).await.iter().sum();
    base + both + DTask::event::<u64>("go").await
}

/// A root with recorded children: its timeline shows its status changes and steps, its
/// children are linked from it and link back, and the list shows roots unless asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_tree_shows_its_timeline_its_children_and_their_parent() -> anyhow::Result<()> {
    let rt = Runtime::new(WorkerConfig::new().register(leaf).register(tree))?;
    let api = Api::new(rt.client().recording_children());
    let app = Router::new().merge(api.routes()).merge(api.pages());
    let root = InstanceId::new("tree-1")?;
    let h = rt
        .client()
        .recording_children()
        .start_with_id(root.clone(), tree())
        .await?;
    let mut page = String::new();
    for _ in 0..500 {
        page = get(&app, "/ui/instances/tree-1").await?.1;
        if page.contains("the event <code>go</code>") && page.matches("s-succeeded").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The timeline: the start, the side effect and the fan-out before the first
    // suspension, the event after it.
    let timeline = &page[page.find(r#"<ol class="timeline">"#).expect("a timeline")..];
    let timeline = &timeline[..timeline.find("</ol>").unwrap()];
    let at = |text: &str| {
        timeline
            .find(text)
            .unwrap_or_else(|| panic!("`{text}` in the timeline: {timeline}"))
    };
    assert!(at("started") < at("a side effect"));
    assert!(
        at("a side effect")
            < at("steps 1–2</span> 2 children of <code>pages_test.leaf</code>: done")
    );
    assert!(at("2 children of") < at(r#"data-status="suspended""#));
    assert!(
        at(r#"data-status="suspended""#)
            < at("step 3</span> waits for the event <code>go</code>: waiting")
    );
    // The children, linked, and none the store does not hold.
    let children = &page[page.find("<h2>Children</h2>").expect("a children section")..];
    for n in [1, 2] {
        assert!(
            children.contains(&format!(
                r#"<a class="child" href="/ui/instances/tree-1.{n}">tree-1.{n}</a>"#
            )),
            "{children}"
        );
    }
    assert_eq!(children.matches(r#"class="child""#).count(), 2);
    // A child's page links to its parent, and its own timeline ends in its finish.
    let (status, child) = get(&app, "/ui/instances/tree-1.1").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        child.contains(r#"<a class="parent" href="/ui/instances/tree-1">tree-1</a>"#),
        "{child}"
    );
    assert!(child.contains(r#"data-status="succeeded""#), "{child}");

    // The list: roots by default, children when asked, the children of one parent.
    let rows = |page: &str, id: &str| page.contains(&format!(r#"<tr data-id="{id}">"#));
    let (_, roots) = get(&app, "/ui").await?;
    assert!(
        rows(&roots, "tree-1") && !rows(&roots, "tree-1.1"),
        "{roots}"
    );
    let (_, all) = get(&app, "/ui?show=all").await?;
    assert!(rows(&all, "tree-1") && rows(&all, "tree-1.1") && rows(&all, "tree-1.2"));
    let (_, of) = get(&app, "/ui?parent=tree-1").await?;
    assert!(!rows(&of, "tree-1") && rows(&of, "tree-1.1") && rows(&of, "tree-1.2"));
    // The same through the JSON route.
    let (_, json) = get(&app, "/instances?parent=tree-1").await?;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    let ids: Vec<&str> = json["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 2, "{json}");
    assert!(ids.contains(&"tree-1.1") && ids.contains(&"tree-1.2"));
    let (_, json) = get(&app, "/instances?roots=true").await?;
    assert!(
        json.contains(r#""id":"tree-1""#) && !json.contains("tree-1.1"),
        "{json}"
    );
    let (status, _) = get(&app, "/instances?roots=maybe").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Finished: the timeline ends in the finish, and the JSON form has the history.
    rt.client().signal(&root, "go", &100u64).await?;
    assert_eq!(h.result().await?, 5 + 2 + 3 + 100);
    let (_, page) = get(&app, "/ui/instances/tree-1").await?;
    assert!(
        page.contains(r#"<li class="change" data-status="succeeded">"#),
        "{page}"
    );
    let (_, json) = get(&app, "/instances/tree-1").await?;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    let history: Vec<&str> = json["history"]
        .as_array()
        .expect("a history")
        .iter()
        .map(|t| t["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(history.first(), Some(&"suspended"), "{json}");
    assert_eq!(history.last(), Some(&"succeeded"), "{json}");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(3), "{json}");
    rt.shutdown().await?;
    Ok(())
}
