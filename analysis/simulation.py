"""A simulated week of a Cortex deployment: the events `make demo` emits.

Pure and deterministic: `simulate(Plan(...))` returns the same list of
envelopes for the same plan and seed, every one a full event (`event_id`,
`timestamp`, ...) in the payload shapes the built-in handlers read (see each
`handlers-wasm/on-*/README.md` and `handlers-wasm/py/on-cost-tracking`).
`demo.py` feeds them through `cortex emit --batch` and `cortex dispatch`.

The world has five masters with their experts, twelve workers on three
models, four scanned services and a handful of planted patterns that the
notebooks and reports should find:

* `refactor-expert` (code-master) loses confidence over the period, and
  code-master's router has a bad three hours the day before the end
  (routing drift alerts); 
  `e2e-test-expert` is a standing low-confidence hot spot;
* `worker-implementation-004` is slow and fails about a fifth of its runs;
* bursts of rate-limit failures on some afternoons (a failure pattern,
  which the learning handler promotes once it has recurred);
* `worker-ops-002` goes silent for three hours, or four beats if longer (a
  heartbeat timeout);
* docs-master's workers run on the expensive model;
* semgrep skips web-app one day (a scan gap);
* a critical CVE appears on `billing-service` mid-week, and two routing
  decisions report confidence as a percentage (they end in the
  dead-letter queue).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass

#: master -> its experts.
MASTERS = {
    "code-master": ["rust-expert", "python-expert", "frontend-expert", "refactor-expert"],
    "security-master": ["cve-expert", "secrets-expert", "dependency-expert"],
    "test-master": ["unit-test-expert", "e2e-test-expert"],
    "docs-master": ["api-docs-expert", "tutorial-expert"],
    "ops-master": ["deploy-expert", "infra-expert"],
}
#: Share of the day's tasks each master receives.
MASTER_SHARE = {"code-master": 0.4, "security-master": 0.12, "test-master": 0.2, "docs-master": 0.13,
                "ops-master": 0.15}

#: USD per million tokens, as the cost handler's `prices` setting takes them.
PRICES = {
    "claude-opus": {"input": 15.0, "output": 75.0},
    "claude-sonnet": {"input": 3.0, "output": 15.0},
    "claude-haiku": {"input": 0.8, "output": 4.0},
}


@dataclass(frozen=True)
class Worker:
    worker_id: str
    master: str
    model: str
    #: Median run time in seconds.
    median_secs: float
    #: Probability that a run fails.
    fail_rate: float


WORKERS = [
    Worker("worker-implementation-001", "code-master", "claude-sonnet", 140, 0.04),
    Worker("worker-implementation-002", "code-master", "claude-sonnet", 150, 0.05),
    Worker("worker-implementation-003", "code-master", "claude-opus", 190, 0.03),
    Worker("worker-implementation-004", "code-master", "claude-sonnet", 480, 0.22),
    Worker("worker-security-001", "security-master", "claude-sonnet", 200, 0.04),
    Worker("worker-security-002", "security-master", "claude-opus", 240, 0.03),
    Worker("worker-test-001", "test-master", "claude-haiku", 90, 0.06),
    Worker("worker-test-002", "test-master", "claude-haiku", 95, 0.07),
    Worker("worker-docs-001", "docs-master", "claude-opus", 160, 0.03),
    Worker("worker-docs-002", "docs-master", "claude-opus", 170, 0.03),
    Worker("worker-ops-001", "ops-master", "claude-haiku", 70, 0.05),
    Worker("worker-ops-002", "ops-master", "claude-haiku", 75, 0.05),
]

TRANSIENT_ERRORS = [
    "upstream request to https://api.anthropic.com/v1/messages timed out after 30000ms",
    "connection reset by peer while streaming from model gateway",
    "model gateway unavailable (503), try again later",
]
RATE_LIMIT_ERROR = "rate limit exceeded (429): retry after {n}s"
PERMANENT_ERRORS = [
    "assertion failed: expected status 200, got 500 in tests/test_api.py:{n}",
    "permission denied: /srv/repos/web-app/.git/index.lock",
    "context length exceeded: {n} tokens > 200000",
    "patch does not apply: src/handlers/mod.rs hunk {n} rejected",
]

SCANNERS = {"trivy": 2, "semgrep": 3, "gitleaks": 4}  # scanner -> hour of its daily run (UTC)
TARGETS = ["api-gateway", "web-app", "billing-service", "worker-runtime"]
SEVERITY_WEIGHTS = [("critical", 0.06), ("high", 0.2), ("medium", 0.4), ("low", 0.26), ("info", 0.08)]
PACKAGES = {
    "trivy": ["openssl", "libxml2", "serde_yaml", "axios", "lodash", "urllib3", "jinja2", "glibc", "zlib"],
    "semgrep": ["src/api/auth.py", "src/billing/invoice.ts", "src/web/render.tsx", "src/runtime/exec.rs"],
    "gitleaks": [".env.example", "deploy/values.yaml", "scripts/release.sh"],
}
TITLES = {
    "trivy": "vulnerable dependency {package}",
    "semgrep": "unsanitised input reaches a sink in {package}",
    "gitleaks": "credential committed in {package}",
}


@dataclass(frozen=True)
class Plan:
    """What to simulate: `days` days ending at `end` (UTC)."""

    end: dt.datetime
    days: int = 7
    #: Tasks on a weekday; weekends get 40% of it.
    tasks_per_day: int = 120
    #: Minutes between two heartbeats of a worker.
    heartbeat_minutes: int = 30
    seed: int = 17

    @property
    def start(self) -> dt.datetime:
        return self.end - dt.timedelta(days=self.days)

    @property
    def heartbeat_threshold_secs(self) -> int:
        """The `threshold_secs` the heartbeat handler needs for this plan:
        two and a half missed beats."""
        return int(self.heartbeat_minutes * 60 * 2.5)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class Simulator:
    """Builds the events of one plan; `run()` returns them sorted by time."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.events: list[dict] = []
        self.task_seq = 0
        self._findings: dict = {}

    # -- envelopes ---------------------------------------------------------

    def emit(self, t, event_type, source, payload, *, correlation_id=None, master=None, priority="medium", tags=()):
        if not (self.plan.start <= t < self.plan.end):
            return
        suffix = "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10))
        metadata = {"priority": priority, "tags": ["demo", *tags]}
        if master:
            metadata["master"] = master
        event = {
            "event_id": f"evt_{t.astimezone(dt.timezone.utc):%Y%m%d_%H%M%S}_{suffix}",
            "event_type": event_type,
            "timestamp": rfc3339(t),
            "source": source,
            "metadata": metadata,
            "payload": payload,
        }
        if correlation_id:
            event["correlation_id"] = correlation_id
        self.events.append(event)

    # -- the world ---------------------------------------------------------

    @property
    def outage_start(self) -> dt.datetime:
        """13:00 UTC on the last day that has three hours to spare."""
        t = (self.plan.end - dt.timedelta(hours=3)).replace(hour=13, minute=0, second=0, microsecond=0)
        return t if t + dt.timedelta(hours=3) <= self.plan.end else t - dt.timedelta(days=1)

    def progress(self, t) -> float:
        """0 at the start of the period, 1 at its end."""
        return (t - self.plan.start) / (self.plan.end - self.plan.start)

    def confidence(self, master, expert, t) -> float:
        outage = self.outage_start
        if master == "code-master" and outage <= t < outage + dt.timedelta(hours=3):
            mean = 0.38  # the router's embeddings were stale for three hours
        elif expert == "refactor-expert":
            mean = 0.8 - 0.4 * self.progress(t)
        elif expert == "e2e-test-expert":
            mean = 0.52
        else:
            mean = 0.84
        return round(min(0.99, max(0.05, self.rng.gauss(mean, 0.07))), 3)

    def task_times(self, day: dt.datetime) -> list[dt.datetime]:
        count = self.plan.tasks_per_day if day.weekday() < 5 else int(self.plan.tasks_per_day * 0.4)
        times = []
        for _ in range(count):
            # Most work in the (UTC) working day, some around the clock.
            hour = self.rng.gauss(14, 3.5) if self.rng.random() < 0.8 else self.rng.uniform(0, 24)
            hour = min(max(hour, 0.0), 23.99)
            times.append(day + dt.timedelta(hours=hour))
        return sorted(times)

    def run(self) -> list[dict]:
        first = self.plan.start.replace(hour=0, minute=0, second=0, microsecond=0)
        days = [first + dt.timedelta(days=d) for d in range(self.plan.days + 1)]
        for day in days:
            for t in self.task_times(day):
                self.task(t)
            self.scans(day)
            self.emit(day + dt.timedelta(hours=3), "system.cleanup_needed", "cortex-scheduler",
                      {"dry_run": True, "retention_days": 30}, priority="low", tags=["schedule"])
        for frac in (0.15, 0.45, 0.75):
            day = (self.plan.start + (self.plan.end - self.plan.start) * frac).replace(hour=0, minute=0, second=0,
                                                                                       microsecond=0)
            self.rate_limit_burst(day + dt.timedelta(hours=15))
        self.heartbeats()
        self.misreported_decisions()
        self.events.sort(key=lambda e: e["timestamp"])
        return self.events

    def task(self, t, *, master=None):
        self.task_seq += 1
        master = master or self.rng.choices(list(MASTER_SHARE), weights=list(MASTER_SHARE.values()))[0]
        task_id = f"task-{t:%m%d}-{self.task_seq:05d}"
        priority = self.rng.choices(["low", "medium", "high", "critical"], weights=[15, 60, 22, 3])[0]
        expert = self.rng.choice(MASTERS[master])
        self.emit(t, "task.created", master, {"task_id": task_id, "master": master, "attempt": 1},
                  correlation_id=task_id, master=master, priority=priority)
        self.emit(t + dt.timedelta(seconds=1), "routing.decision_made", "moe-router",
                  {"master": master, "expert": expert, "confidence": self.confidence(master, expert, t),
                   "task_id": task_id}, correlation_id=task_id, master=master)
        if self.rng.random() < 0.012:
            error = self.rng.choice([
                f"assignment timed out: no idle worker for {master} after 300s",
                "invalid task spec: field repo is required",
            ])
            self.emit(t + dt.timedelta(seconds=300), "task.failed", "task-processor",
                      {"task_id": task_id, "error": error, "attempt": 1},
                      correlation_id=task_id, master=master, priority=priority)
            return
        self.attempt(t + dt.timedelta(seconds=2), task_id, master, expert, priority, attempt=1)

    def attempt(self, t, task_id, master, expert, priority, *, attempt, error=None):
        worker = self.rng.choice([w for w in WORKERS if w.master == master])
        self.emit(t, "task.assigned", master, {"task_id": task_id, "worker_id": worker.worker_id, "expert": expert,
                                               "attempt": attempt},
                  correlation_id=task_id, master=master, priority=priority)
        self.emit(t + dt.timedelta(seconds=1), "worker.started", worker.worker_id,
                  {"worker_id": worker.worker_id, "task_id": task_id, "model": worker.model, "attempt": attempt},
                  correlation_id=task_id, master=master, priority=priority)
        secs = worker.median_secs * math.exp(self.rng.gauss(0, 0.45))
        input_tokens = int(32_000 * math.exp(self.rng.gauss(0, 0.5)) * (1.3 if master == "docs-master" else 1))
        output_tokens = int(input_tokens * self.rng.uniform(0.1, 0.25))
        fails = error is not None or self.rng.random() < worker.fail_rate
        end = t + dt.timedelta(seconds=1 + secs)
        payload = {"worker_id": worker.worker_id, "task_id": task_id, "model": worker.model, "attempt": attempt}
        if not fails:
            payload |= {"status": "completed", "duration_ms": int(secs * 1000),
                        "tokens_used": input_tokens + output_tokens, "input_tokens": input_tokens,
                        "output_tokens": output_tokens}
            self.emit(end, "worker.completed", worker.worker_id, payload,
                      correlation_id=task_id, master=master, priority=priority)
            return
        transient = error is not None or self.rng.random() < 0.6
        if error is None:
            template = self.rng.choice(TRANSIENT_ERRORS if transient else PERMANENT_ERRORS)
            error = template.format(n=self.rng.randint(20, 400) if "{n}" in template else 0)
            if "context length" in error:
                error = f"context length exceeded: {self.rng.randint(200_001, 260_000)} tokens > 200000"
        # A failed run is cut short: fewer tokens, less time.
        cut = self.rng.uniform(0.2, 0.7)
        payload |= {"status": "failed", "error": error, "duration_ms": int(secs * cut * 1000),
                    "input_tokens": int(input_tokens * cut), "output_tokens": int(output_tokens * cut * 0.3)}
        payload["tokens_used"] = payload["input_tokens"] + payload["output_tokens"]
        self.emit(end, "worker.failed", worker.worker_id, payload, correlation_id=task_id, master=master,
                  priority=priority)
        # The orchestrator picks a transient failure up again (the handler's
        # task.created retry says it should); a permanent one stays failed.
        if transient and attempt < 3:
            self.attempt(end + dt.timedelta(seconds=self.rng.randint(60, 300)), task_id, master, expert, priority,
                         attempt=attempt + 1)

    def rate_limit_burst(self, t):
        """Six tasks hit the provider's rate limit within 40 minutes."""
        for i in range(6):
            at = t + dt.timedelta(minutes=7 * i)
            self.task_seq += 1
            task_id = f"task-{at:%m%d}-{self.task_seq:05d}"
            expert = self.rng.choice(MASTERS["code-master"])
            self.emit(at, "task.created", "code-master", {"task_id": task_id, "master": "code-master", "attempt": 1},
                      correlation_id=task_id, master="code-master")
            self.emit(at + dt.timedelta(seconds=1), "routing.decision_made", "moe-router",
                      {"master": "code-master", "expert": expert,
                       "confidence": self.confidence("code-master", expert, at), "task_id": task_id},
                      correlation_id=task_id, master="code-master")
            self.attempt(at + dt.timedelta(seconds=2), task_id, "code-master", expert, "high", attempt=1,
                         error=RATE_LIMIT_ERROR.format(n=20 + 10 * i))

    def heartbeats(self):
        step = dt.timedelta(minutes=self.plan.heartbeat_minutes)
        crash_at = self.plan.start + (self.plan.end - self.plan.start) * 0.55
        crash_at = crash_at.replace(minute=0, second=0, microsecond=0)
        # Longer than the handler's threshold (two and a half beats).
        silence = max(dt.timedelta(hours=3), 4 * step)
        for n, worker in enumerate(WORKERS):
            t = self.plan.start + dt.timedelta(seconds=17 * n)
            while t < self.plan.end:
                silent = worker.worker_id == "worker-ops-002" and crash_at <= t < crash_at + silence
                if not silent:
                    self.emit(t, "worker.heartbeat", worker.worker_id,
                              {"worker_id": worker.worker_id, "load": round(self.rng.uniform(0.05, 0.95), 2),
                               "tasks_in_flight": self.rng.randint(0, 3)},
                              priority="low", tags=["heartbeat"])
                t += step

    def scans(self, day):
        """Each scanner scans each target once a day; a finding stays
        visible from the day it is introduced until it is fixed."""
        gap = (self.plan.end - dt.timedelta(days=2)).date()
        for scanner, hour in SCANNERS.items():
            for target in TARGETS:
                if (scanner, target) == ("semgrep", "web-app") and day.date() == gap:
                    continue  # its runner ran out of disk that day
                t = day + dt.timedelta(hours=hour, minutes=TARGETS.index(target) * 9)
                scan_id = f"scan-{scanner}-{target}-{t:%Y%m%d}"
                present = [f for f in self.findings(scanner, target) if f["introduced"] <= t < f["fixed"]]
                counts = {s: 0 for s, _ in SEVERITY_WEIGHTS}
                for f in present:
                    counts[f["severity"]] += 1
                    self.emit(t + dt.timedelta(seconds=30), "security.vulnerability_found", scanner,
                              {k: f[k] for k in ("id", "severity", "package", "version", "target", "title", "scanner")},
                              correlation_id=scan_id, master="security-master",
                              priority="high" if f["severity"] in ("critical", "high") else "medium")
                self.emit(t + dt.timedelta(seconds=45), "security.scan_completed", scanner,
                          {"scan_id": scan_id, "scanner": scanner, "target": target, "findings": counts,
                           "duration_ms": self.rng.randint(20_000, 240_000)},
                          correlation_id=scan_id, master="security-master")

    def findings(self, scanner, target):
        """The findings of one scanner on one target over the whole period
        (drawn once, from their own generator, so the scan order does not
        change them)."""
        key = (scanner, target)
        if key not in self._findings:
            rng = random.Random(f"{self.plan.seed}-{scanner}-{target}")
            span = self.plan.end - self.plan.start
            found = []
            for i in range(rng.randint(2, 5)):
                severity = rng.choices([s for s, _ in SEVERITY_WEIGHTS], weights=[w for _, w in SEVERITY_WEIGHTS])[0]
                package = rng.choice(PACKAGES[scanner])
                introduced = self.plan.start - dt.timedelta(days=rng.randint(0, 20)) if i < 2 else \
                    self.plan.start + span * rng.uniform(0.1, 0.8)
                fixed = self.plan.start + span * rng.uniform(0.3, 1.0) if rng.random() < 0.3 else self.plan.end
                ident = (f"CVE-2026-{rng.randint(10000, 49999)}" if scanner == "trivy"
                         else f"{scanner.upper()}-{rng.randint(100, 999)}")
                found.append({"id": ident, "severity": severity, "package": package,
                              "version": f"{rng.randint(0, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                              "target": target, "title": TITLES[scanner].format(package=package),
                              "scanner": scanner, "introduced": introduced, "fixed": fixed})
            if key == ("trivy", "billing-service"):
                found.append({"id": "CVE-2026-31337", "severity": "critical", "package": "openssl", "version": "3.0.7",
                              "target": target, "title": "remote code execution in openssl", "scanner": scanner,
                              "introduced": self.plan.start + span * 0.45, "fixed": self.plan.end})
            self._findings[key] = found
        return self._findings[key]

    def misreported_decisions(self):
        """A router build that reports confidence in percent: the routing
        handler refuses these, and they end in the dead-letter queue."""
        for frac in (0.7, 0.71):
            t = self.plan.start + (self.plan.end - self.plan.start) * frac
            self.task_seq += 1
            task_id = f"task-{t:%m%d}-{self.task_seq:05d}"
            self.emit(t, "routing.decision_made", "moe-router-canary",
                      {"master": "ops-master", "expert": "deploy-expert", "confidence": 87, "task_id": task_id},
                      correlation_id=task_id, master="ops-master")


def simulate(plan: Plan) -> list[dict]:
    """The plan's events, sorted by timestamp."""
    return Simulator(plan).run()
