//! The dashboard in a real browser: Debian's headless Chromium driven by
//! chromedriver through the W3C WebDriver HTTP API (plain HTTP + JSON, no
//! client library). `make test` installs both (`make browser`); without
//! them this test fails saying so.
//!
//! It loads the page, emits an event with `cortex emit`, sees it in the
//! live table (printing the time from emit to seen: the issue asks for
//! under a second), opens its trace by clicking it, checks that a
//! handler's message with markup in it shows as text, and saves a
//! screenshot (copied to `$CORTEX_DASHBOARD_SCREENSHOT` when set, which is
//! how docs/dashboard.png is made).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use cortex_tests::{Root, wait_for};
use serde::Deserialize;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Every WebDriver answer: `{"value": ...}`.
#[derive(Deserialize)]
struct Answer<T> {
    value: T,
}

#[derive(Deserialize)]
struct NewSession {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// A chromedriver child and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    fn start(scratch: &Path) -> Result<Browser> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            ensure!(
                Path::new(bin).is_file(),
                "{bin} is missing: run `make browser` (as root it runs `apt-get install -y chromium chromium-driver`)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(scratch.join("chromedriver.log"))?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("failed to start chromedriver")?;
        let addr = format!("127.0.0.1:{port}");
        let mut b = Browser { driver, addr, session: String::new() };
        wait_for(Duration::from_secs(20), || {
            Ok(request(&b.addr, "GET", "/status", "").is_ok_and(|(status, _)| status == 200))
        })
        .context("chromedriver never answered /status")?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100", format!("--user-data-dir={}", scratch.join("chromium").display())]
            }
        }}});
        let s: NewSession = b.call("POST", "/session", Some(caps))?;
        b.session = s.session_id;
        Ok(b)
    }

    fn call<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> Result<T> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = request(&self.addr, method, path, &body)?;
        ensure!(status == 200, "webdriver {method} {path} answered {status}: {text}");
        let a: Answer<T> = serde_json::from_str(&text).with_context(|| format!("webdriver {path}: {text}"))?;
        Ok(a.value)
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn navigate(&self, url: &str) -> Result<()> {
        let _: Value = self.call("POST", &self.session_path("/url"), Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` in the page with `args`; returns what it returns.
    fn run<T: serde::de::DeserializeOwned>(&self, script: &str, args: Value) -> Result<T> {
        self.call("POST", &self.session_path("/execute/sync"), Some(json!({ "script": script, "args": args })))
    }

    fn screenshot(&self, to: &Path) -> Result<()> {
        let png: String = self.call("GET", &self.session_path("/screenshot"), None)?;
        std::fs::write(to, base64::engine::general_purpose::STANDARD.decode(png)?)?;
        Ok(())
    }
}

/// One WebDriver call: chromedriver keeps connections open whatever the
/// request says, so the answer is read by its `Content-Length`, not to the end.
fn request(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let mut length = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut text = vec![0u8; length];
    r.read_exact(&mut text)?;
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(&self.addr, "DELETE", &self.session_path(""), "");
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const HAS_ROW: &str = "return document.querySelector('#events tr[data-event-id=\"' + arguments[0] + '\"]') !== null;";
const HAS_NODE: &str =
    "return document.querySelector('#trace-tree [data-event-id=\"' + arguments[0] + '\"]') !== null;";

#[test]
fn the_page_shows_an_emitted_event_within_a_second_and_opens_its_trace() -> Result<()> {
    let root = Root::with_handlers(super::HANDLERS)?;
    let svc = root.serve()?;
    // Something in every panel: a dead letter whose reason holds markup.
    let bad = root.emit("task.failed", r#"{"count": "<b id=pwn>many</b>"}"#)?;
    wait_for(Duration::from_secs(20), || Ok(root.dead_letters()?.len() == 1))?;
    root.emit("worker.heartbeat", r#"{"worker_id": "w-1"}"#)?;

    let browser = Browser::start(root.scratch())?;
    browser.navigate(&format!("http://{}/", svc.addr))?;
    wait_for(Duration::from_secs(20), || {
        Ok(browser.run::<String>("return document.getElementById('conn').textContent;", json!([]))? == "live")
    })
    .context("the page never connected to /api/stream")?;

    let start = Instant::now();
    let id = root.emit("task.created", "{}")?;
    let emitted = start.elapsed();
    let mut seen = None;
    wait_for(Duration::from_secs(10), || {
        let there: bool = browser.run(HAS_ROW, json!([id]))?;
        if there {
            seen = Some(start.elapsed());
        }
        Ok(there)
    })
    .context("the emitted event never appeared in the page")?;
    let seen = seen.context("seen")?;
    eprintln!(
        "dashboard: `cortex emit` returned after {:.0} ms; the event was in the page {:.0} ms after the emit began",
        emitted.as_secs_f64() * 1000.0,
        seen.as_secs_f64() * 1000.0
    );

    // Its trace, one click away.
    let _: Value = browser
        .run("document.querySelector('#events tr[data-event-id=\"' + arguments[0] + '\"]').click();", json!([id]))?;
    wait_for(Duration::from_secs(10), || browser.run(HAS_NODE, json!([id])))
        .context("clicking the event never showed its trace")?;
    let shown: String = browser.run("return document.getElementById('trace').textContent;", json!([]))?;
    ensure!(shown.contains("task.created") && shown.contains("sink"), "the trace shows: {shown}");

    // The dead letter's trace shows the handler's message, markup as text.
    let _: Value = browser.run(
        "document.getElementById('trace-id').value = arguments[0]; document.querySelector('#trace-form button').click();",
        json!([bad]),
    )?;
    wait_for(Duration::from_secs(10), || browser.run(HAS_NODE, json!([bad])))?;
    let text: String = browser.run("return document.getElementById('trace').textContent;", json!([]))?;
    let planted: bool = browser.run("return document.getElementById('pwn') !== null;", json!([]))?;
    ensure!(text.contains("<b id=pwn>many</b>") && !planted, "event text was parsed as HTML: {text}");

    // The panels filled in: handlers, the dead letter, the start reload.
    wait_for(Duration::from_secs(10), || {
        browser.run(
            "return document.querySelector('#handlers tr[data-handler=\"sink\"]') !== null \
             && document.querySelector('#letters tr[data-letter-id]') !== null \
             && document.getElementById('reloads').children.length > 0;",
            json!([]),
        )
    })
    .context("the handler, dead-letter and reload panels stayed empty")?;
    let no_retry: bool = browser.run("return document.getElementById('retry') === null;", json!([]))?;
    ensure!(no_retry, "a read-only page shows no retry button");

    let _: Value = browser.run("window.scrollTo(0, 0);", json!([]))?;
    let shot = root.scratch().join("dashboard.png");
    browser.screenshot(&shot)?;
    let bytes = std::fs::read(&shot)?;
    if !bytes.starts_with(b"\x89PNG") {
        bail!("the screenshot is not a PNG");
    }
    if let Some(to) = std::env::var_os("CORTEX_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, to)?;
    }
    Ok(())
}
