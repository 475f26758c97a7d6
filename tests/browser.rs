//! The whole product in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver), against a real server, builder and proxy. Sign up, create a project
//! from a local repository, deploy, watch the live log reach "ready", open the site,
//! deploy again, roll back. Screenshots of every page go to `target/screenshots/`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestServer, fixtures, images};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Client, Driver) {
    let port = common::free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (bash .ci/run installs chromium-driver)");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (client, driver)
}

async fn shot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn fill(c: &Client, name: &str, value: &str) {
    let field = c
        .find(Locator::Css(&format!("[name='{name}']")))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn submit(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn body_text(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_for_text(c: &Client, css: &str, text: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && el.text().await.unwrap_or_default().contains(text)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {text:?}: {}",
            body_text(c).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deploys from the project page and waits for the live log to say ready.
async fn deploy_and_watch(
    c: &Client,
    base: &str,
    project: &str,
    screenshot: Option<&str>,
) -> String {
    c.goto(&format!("{base}/projects/{project}")).await.unwrap();
    submit(c, "form[action$='/deploy'] button").await;
    wait_for_text(c, "#log", "Cloning", 30).await;
    wait_for_text(c, "#banner", "Ready", 60).await;
    wait_for_text(c, "#log", "Deployment ready", 10).await;
    let badge = c
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        badge.to_lowercase(),
        "ready",
        "the badge follows the stream"
    );
    if let Some(name) = screenshot {
        shot(c, name).await;
    }
    c.current_url()
        .await
        .unwrap()
        .path()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_deploys_and_rolls_back_in_a_browser() {
    images::ensure();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.base_domain = "localhost".into();
    config.server.public_url = format!("http://localhost:{port}");
    config.builder.concurrency = 1;
    config.builder.default_image = images::BUSYBOX.into();
    config.builder.network = scalemesh::config::BuildNetwork::None;
    let repo_dir = dir.path().join("repo");
    let srv = TestServer::start_on(listener, config, dir).await;
    let repo = fixtures::repo(
        &repo_dir,
        &[("index.html", "<h1>Hello from version one</h1>")],
    );
    let base = format!("http://localhost:{port}");
    let (c, _driver) = browser().await;

    // First run: the admin account.
    c.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/setup");
    assert!(body_text(&c).await.contains("Create the admin account"));
    shot(&c, "01-setup").await;
    fill(&c, "email", "me@example.com").await;
    fill(&c, "password", "a-long-password").await;
    submit(&c, "form[action='/setup'] button").await;
    wait_for_text(&c, "main", "No projects yet", 10).await;
    shot(&c, "02-dashboard-empty").await;

    // A project from the local repository; a bad name first shows the message inline.
    submit(&c, ".card.empty a.button").await;
    fill(&c, "name", "Bad_Name").await;
    fill(&c, "git_url", &format!("file://{}", repo.display())).await;
    submit(&c, "form.stack button[type=submit]").await;
    wait_for_text(&c, ".error", "name:", 10).await;
    shot(&c, "03-new-project-error").await;
    fill(&c, "name", "site").await;
    fill(&c, "git_url", &format!("file://{}", repo.display())).await;
    submit(&c, "form.stack button[type=submit]").await;
    wait_for_text(&c, "main", "Project created", 10).await;
    shot(&c, "04-project-new").await;

    // Deploy and watch the live log reach ready.
    let first = deploy_and_watch(&c, &base, "site", Some("05-deployment-ready")).await;
    c.goto(&format!("http://site.localhost:{port}/"))
        .await
        .unwrap();
    wait_for_text(&c, "h1", "Hello from version one", 10).await;
    shot(&c, "06-site-v1").await;

    // A second commit, deployed: production moves to it.
    let git = git2::Repository::open(&repo).unwrap();
    fixtures::commit(
        &git,
        &[("index.html", "<h1>Hello from version two</h1>")],
        "Second version",
    );
    let second = deploy_and_watch(&c, &base, "site", None).await;
    assert_ne!(first, second);
    c.goto(&format!("http://site.localhost:{port}/"))
        .await
        .unwrap();
    wait_for_text(&c, "h1", "version two", 10).await;

    // Roll back from the project page, confirming the dialog.
    c.goto(&format!("{base}/projects/site")).await.unwrap();
    wait_for_text(&c, "table.deployments", "Second version", 10).await;
    shot(&c, "07-project-deployments").await;
    submit(&c, "form[action$='/promote'] button").await;
    c.accept_alert().await.unwrap();
    wait_for_text(&c, "main", "Production now serves", 10).await;
    c.goto(&format!("http://site.localhost:{port}/"))
        .await
        .unwrap();
    wait_for_text(&c, "h1", "Hello from version one", 10).await;

    // Settings, tokens, and the dashboard as it is now.
    c.goto(&format!("{base}/projects/site/settings"))
        .await
        .unwrap();
    wait_for_text(&c, "h1", "Settings of site", 10).await;
    shot(&c, "08-settings").await;
    c.goto(&format!("{base}/tokens")).await.unwrap();
    fill(&c, "name", "ci").await;
    submit(&c, "form[action='/tokens'] button").await;
    wait_for_text(&c, "main", "shown only once", 10).await;
    let secret = c
        .find(Locator::Css("pre.secret"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(secret.starts_with("smt_"), "{secret}");
    shot(&c, "09-tokens").await;
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for_text(&c, ".projects", "site", 10).await;
    assert!(body_text(&c).await.to_lowercase().contains("ready"));
    shot(&c, "10-dashboard").await;
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/projects/site")).await.unwrap();
    wait_for_text(&c, "table.deployments", "Promote", 10).await;
    shot(&c, "11-project-phone").await;

    c.close().await.unwrap();
    srv.stop().await;
}
