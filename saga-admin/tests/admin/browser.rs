//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! started by `scripts/services/chromium.sh`, which sets `SAGA_TEST_WEBDRIVER_URL`).

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{server, Params, STAGING};

/// Where the screenshots go: `target/admin-screenshots/` of the workspace.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/admin-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn shoot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(name), png).expect("write screenshot");
}

async fn connect(webdriver: &str) -> Client {
    let mut capabilities = serde_json::Map::new();
    let mut chrome = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1300", "--lang=en-US"],
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    capabilities.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a WebDriver session")
}

/// Waits until `script` (a JS expression) is true.
async fn wait_until(browser: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value =
            browser.execute(&format!("return !!({script});"), vec![]).await.expect("script");
        if value == Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let text = browser.find(Locator::Css("main")).await.ok();
            let text = match text {
                Some(e) => e.text().await.unwrap_or_default(),
                None => String::new(),
            };
            panic!("timed out waiting for {what}; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(browser: &Client, css: &str) -> String {
    browser.find(Locator::Css(css)).await.expect(css).text().await.expect("text")
}

/// The chromedriver to use: missing, it fails the test under CI and skips it elsewhere, by the
/// workspace's one rule (`saga_testkit::ci`).
fn webdriver_url() -> Option<String> {
    match std::env::var("SAGA_TEST_WEBDRIVER_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => saga_testkit::ci::unavailable(
            "dashboard_in_chromium",
            "SAGA_TEST_WEBDRIVER_URL is not set: run scripts/test.sh, whose \
             scripts/services/chromium.sh starts chromedriver and sets it",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let Some(webdriver) = webdriver_url() else { return };
    let s = server().await;
    s.finished("deploy", "staging", "web", Params::default()).await;
    s.finished("migrate", "staging", "db", Params::default()).await;
    s.finished("deploy", "staging", "api", Params { fail: true, block: false }).await;
    let running = s.blocked("staging", "worker").await;
    let browser = connect(&webdriver).await;
    let result = drive(&browser, &s, running).await;
    let _ = browser.close().await;
    result.expect("the dashboard works");
}

async fn drive(
    browser: &Client,
    s: &crate::support::Server,
    running: saga_core::OperationId,
) -> Result<(), fantoccini::error::CmdError> {
    // Sign in: a wrong token first.
    browser.goto(&format!("{}/", s.url)).await?;
    browser.find(Locator::Css("#login-token")).await?.send_keys("wrong").await?;
    browser.find(Locator::Css("#login-submit")).await?.click().await?;
    wait_until(browser, "the refusal", "document.getElementById('login-error')").await;
    assert_eq!(text(browser, "#login-error").await, "The token was refused.");
    shoot(browser, "01-sign-in-refused.png").await;
    browser.find(Locator::Css("#login-token")).await?.send_keys(STAGING).await?;
    browser.find(Locator::Css("#login-submit")).await?.click().await?;

    // The list: the running Operation with its status; the token is in no URL.
    let row = format!("#operations tr[data-id='{running}']");
    wait_until(browser, "the list", &format!("document.querySelector(\"{row}\")")).await;
    let url = browser.current_url().await?;
    assert!(!url.as_str().contains("token"), "{url}");
    assert_eq!(text(browser, &format!("{row} .badge")).await, "running");
    let rows = browser.find_all(Locator::Css("#operations tbody tr")).await?;
    assert_eq!(rows.len(), 4);
    assert!(text(browser, "#operations").await.contains("failed at rollout"));
    shoot(browser, "02-operations.png").await;
    browser.set_window_size(390, 844).await?;
    shoot(browser, "03-operations-phone.png").await;
    let overflow: Value = browser
        .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;", vec![])
        .await?;
    assert_eq!(overflow, Value::Bool(true), "the page fits a phone's width");
    browser.set_window_size(1280, 1300).await?;

    // The CSV link: fetched by the page itself, with its cookie.
    let href = browser.find(Locator::Css("#report-link")).await?.attr("href").await?.expect("href");
    let fetched = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {credentials: 'same-origin'})
               .then(r => r.text().then(t => done([r.status, r.headers.get('content-disposition'), t])))
               .catch(e => done([0, null, String(e)]));",
            vec![json!(href)],
        )
        .await?;
    assert_eq!(fetched[0], 200, "{fetched}");
    assert!(fetched[1].as_str().unwrap_or("").starts_with("attachment;"), "{fetched}");
    let csv_text = fetched[2].as_str().unwrap_or("").to_owned();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(reader.headers().expect("header").len(), saga_core::report::ACTIVITY_COLUMNS.len());
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a CSV row")).collect();
    assert_eq!(records.len(), 4);
    assert!(records.iter().any(|r| r[0] == *running.to_string() && &r[2] == "running"));

    // The Operation's page: its live log.
    browser.find(Locator::Css(&format!("{row} a.op-link"))).await?.click().await?;
    wait_until(
        browser,
        "the live log",
        "document.getElementById('log').textContent.includes('waiting until cancelled')",
    )
    .await;
    wait_until(
        browser,
        "the stream",
        "document.getElementById('stream-state').textContent === 'live'",
    )
    .await;
    assert_eq!(text(browser, "#status .badge").await, "running");
    assert!(text(browser, "#timeline").await.contains("rollout"));
    shoot(browser, "04-operation-running.png").await;

    // Cancel: the reason form, then the verdict once it rolled back.
    browser.find(Locator::Css("#cancel-button")).await?.click().await?;
    browser
        .find(Locator::Css("#cancel-reason"))
        .await?
        .send_keys("wrong build, from the browser")
        .await?;
    shoot(browser, "05-operation-cancel-form.png").await;
    browser.find(Locator::Css("#cancel-submit")).await?.click().await?;
    wait_until(
        browser,
        "the verdict",
        "document.getElementById('verdict').dataset.status === 'rolled_back'",
    )
    .await;
    let verdict = text(browser, "#verdict").await;
    assert_eq!(
        verdict,
        "Verdict: rolled back (cancelled by stager: wrong build, from the browser)"
    );
    let log = text(browser, "#log").await;
    assert!(log.contains("rollback succeeded"), "{log}");
    wait_until(
        browser,
        "the refreshed status",
        "document.querySelector('#status .badge').textContent === 'rolled back'",
    )
    .await;
    wait_until(
        browser,
        "the refreshed timeline",
        "document.getElementById('timeline').textContent.includes('compensated')",
    )
    .await;
    assert_eq!(browser.find_all(Locator::Css("#cancel-button")).await?.len(), 0);
    let state = s.executor.status(running).await.expect("status");
    assert_eq!(
        state.cancel(),
        Some(saga_core::state::CancelledBy {
            actor: "stager",
            reason: "wrong build, from the browser"
        })
    );
    assert_eq!(state.outcome().map(|o| o.status()), Some(saga_core::Status::RolledBack));
    shoot(browser, "06-operation-rolled-back.png").await;
    browser.set_window_size(390, 844).await?;
    shoot(browser, "07-operation-phone.png").await;
    browser.set_window_size(1280, 1300).await?;

    // Another environment's Operation: not found, as a missing one.
    let prod = s.finished("deploy", "prod", "web", Params::default()).await;
    browser.goto(&format!("{}/ops/{prod}", s.url)).await?;
    assert_eq!(text(browser, "#error").await, format!("operation {prod} not found"));
    Ok(())
}
