//! `cortex serve` in the tests: start a service on a root, wait for what
//! it does, and read its HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).

use super::*;

/// A `cortex serve` child process on a root, stopped (SIGKILL) on drop.
pub struct Service {
    pub child: std::process::Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Root {
    /// Starts `cortex serve` on a free loopback port and waits until `/readyz` says ready.
    pub fn serve(&self) -> Result<Service> {
        self.serve_with(&[])
    }

    /// [`Root::serve`] for a start that compiles components with an empty
    /// cache (Python and JavaScript ones take 10–20 s each on 2 cores):
    /// ready within three minutes rather than 30 s.
    pub fn serve_cold(&self) -> Result<Service> {
        self.serve_within(&[], Duration::from_secs(180))
    }

    /// [`Root::serve`] with extra environment variables (webhook secrets).
    pub fn serve_with(&self, env: &[(&str, &str)]) -> Result<Service> {
        self.serve_within(env, Duration::from_secs(30))
    }

    fn serve_within(&self, env: &[(&str, &str)], ready_within: Duration) -> Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let log = self.scratch().join(format!("serve-{port}.log"));
        let child = self
            .command()
            .args(["serve", "--listen", &addr])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut svc = Service { child, addr, log };
        wait_for(ready_within, || Ok(http_get(&svc.addr, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)))
            .map_err(|e| anyhow::anyhow!("{e}: serve never became ready:\n{}", svc.log_text()))?;
        if let Some(status) = svc.child.try_wait()? {
            bail!("serve exited {status}:\n{}", svc.log_text());
        }
        Ok(svc)
    }
}

impl Service {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc_kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Result<i32> {
        self.signal(15);
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code().unwrap_or(-1));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("serve did not stop within 30 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http_get(&self.addr, "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

use std::time::Duration;

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        if f()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("condition not met within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let r = http_request(addr, "GET", path, &[], b"")?;
    Ok((r.status, r.body))
}

/// What [`http_request`] got back.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request on a fresh connection (`Connection: close`),
/// with extra `headers` and a `body` (its length is sent). Chunked replies
/// are not decoded: for a streaming endpoint, read the socket yourself.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse { status, headers, body: body.to_string() })
}

/// Parses Prometheus/OpenMetrics text into `(name{labels}, value)` samples;
/// fails on any line that is neither a comment nor a sample.
pub fn parse_metrics(text: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').with_context(|| format!("not a sample: {line:?}"))?;
        let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
        let ident_end = name.find('{').unwrap_or(name.len());
        let ident = &name[..ident_end];
        if ident.is_empty() || !ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            bail!("bad metric name in {line:?}");
        }
        if ident_end < name.len() && !name.ends_with('}') {
            bail!("unterminated labels in {line:?}");
        }
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The value of the sample whose name and labels contain all of `parts`.
pub fn metric(samples: &[(String, f64)], parts: &[&str]) -> Option<f64> {
    samples.iter().find(|(n, _)| parts.iter().all(|p| n.contains(p))).map(|(_, v)| *v)
}
