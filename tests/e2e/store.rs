//! The foundation: init, emit (single and batch), validate, status, the
//! queue's ordering and durability layout, and the library API.

use anyhow::Result;
use cortex::event::{NewEvent, Priority};
use cortex::layout::Layout;
use cortex::producer::Producer;
use cortex::queue::{FsQueue, Queue};
use cortex_tests::{Root, snapshot};
use serde_json::json;

#[test]
fn init_creates_the_layout_and_is_idempotent() -> Result<()> {
    let root = Root::uninit()?;
    let out = root.ok(&["init"])?;
    assert!(out.contains("initialised"), "{out}");
    for dir in ["events/queue", "events/archive", "events/dead-letter", "state"] {
        assert!(root.join(dir).is_dir(), "{dir} missing");
    }
    let config = std::fs::read_to_string(root.join("cortex.toml"))?;
    assert!(config.contains("max_event_bytes"));
    let before = snapshot(&root.path);
    let again = root.ok(&["init"])?;
    assert!(again.contains("already initialised; nothing changed"), "{again}");
    assert_eq!(before, snapshot(&root.path));
    Ok(())
}

#[test]
fn root_can_come_before_or_after_the_command_or_from_the_environment() -> Result<()> {
    let root = Root::uninit()?;
    let bin = cortex_tests::cortex_bin();
    let st = std::process::Command::new(&bin).arg("init").arg("--root").arg(&root.path).status()?;
    assert!(st.success());
    let out = std::process::Command::new(&bin)
        .args(["emit", "daemon.started", "d", "{}"])
        .env("CORTEX_ROOT", &root.path)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(root.files("events/queue").len(), 1);
    Ok(())
}

#[test]
fn emit_logs_and_queues_the_seed_example() -> Result<()> {
    let root = Root::new()?;
    let id = root.ok(&[
        "emit",
        "worker.completed",
        "worker-001",
        r#"{"worker_id": "worker-001", "status": "completed", "tokens_used": 1500}"#,
        "task-123",
        "high",
        "--tag",
        "production",
        "--master",
        "security-master",
    ])?;
    let id = id.trim();
    assert!(cortex::event::is_valid_event_id(id), "{id}");
    let queue = root.files("events/queue");
    assert_eq!(queue.len(), 1);
    assert!(queue[0].starts_with("1-") && queue[0].contains(id), "{queue:?}");
    let log = root.log("worker")?;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["event_id"], id);
    assert_eq!(log[0]["correlation_id"], "task-123");
    assert_eq!(log[0]["metadata"], json!({"master": "security-master", "priority": "high", "tags": ["production"]}));
    assert_eq!(log[0]["payload"]["tokens_used"], 1500);
    let queued = root.read_json(&format!("events/queue/{}", queue[0]))?;
    assert_eq!(queued, log[0]);
    assert!(root.files("events/tmp").is_empty(), "temp files left behind");

    let full = root.ok(&["emit", "daemon.stopped", "d", "{}", "--json"])?;
    let full: serde_json::Value = serde_json::from_str(&full)?;
    assert_eq!(full["event_type"], "daemon.stopped");
    assert_eq!(full["metadata"]["priority"], "medium");
    assert_eq!(root.log("system")?.len(), 1, "daemon events share system-events.jsonl");
    Ok(())
}

#[test]
fn bad_input_is_refused_and_writes_nothing() -> Result<()> {
    let root = Root::new()?;
    let before = snapshot(&root.path);
    let cases: [(&[&str], &str); 5] = [
        (&["emit", "foo.bar", "s", "{}"], "unknown event type \"foo.bar\""),
        (&["emit", "task.failed", "s", "{not json"], "PAYLOAD_JSON is not valid JSON"),
        (&["emit", "task.failed", "s", "[1, 2]"], "must be a JSON object"),
        (&["emit", "task.failed", "", "{}"], "source: must not be empty"),
        (&["emit", "task.failed", "s", "{}", "c", "urgent"], "unknown priority"),
    ];
    for (args, expect) in cases {
        let out = root.fails(args)?;
        assert!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
    }
    // Too big for a command-line argument: through a batch.
    let huge = format!(
        "{{\"event_type\": \"task.failed\", \"source\": \"s\", \"payload\": {{\"x\": \"{}\"}}}}\n",
        "y".repeat(1_100_000)
    );
    let out = root.run_with(&["emit", "--batch"], huge.as_bytes())?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("line 1: (document): line is 1100") && out.stderr.contains("over the 1048576 byte limit"),
        "{}",
        out.stderr
    );
    assert_eq!(before, snapshot(&root.path), "a refused emit changed the root");
    Ok(())
}

#[test]
fn uninitialised_or_unwritable_roots_get_a_clear_error() -> Result<()> {
    let root = Root::uninit()?;
    let out = root.fails(&["emit", "task.failed", "s", "{}"])?;
    assert!(out.stderr.contains("run `cortex init --root"), "{}", out.stderr);
    assert!(!root.path.exists(), "emit created the root");

    let root = Root::new()?;
    std::fs::remove_dir(root.join("events/tmp"))?;
    std::fs::write(root.join("events/tmp"), b"not a directory")?;
    let out = root.fails(&["emit", "task.failed", "s", "{}"])?;
    assert!(out.stderr.contains("events/tmp"), "{}", out.stderr);
    assert!(root.files("events/queue").is_empty());
    assert!(root.log("task")?.is_empty());
    Ok(())
}

#[test]
fn config_errors_name_the_key() -> Result<()> {
    let root = Root::new()?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("max_event_bytes =", "max_event_byts =");
    std::fs::write(root.join("cortex.toml"), config)?;
    let out = root.fails(&["status"])?;
    assert!(out.stderr.contains("max_event_byts"), "{}", out.stderr);
    assert!(out.stderr.contains("cortex.toml"), "{}", out.stderr);
    Ok(())
}

#[test]
fn limits_and_custom_types_come_from_the_config() -> Result<()> {
    let root = Root::new()?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?
        .replace("custom_types = []", "custom_types = [\"billing.invoice_paid\", \"task.escalated\"]")
        .replace("max_event_bytes = 1048576", "max_event_bytes = 600");
    std::fs::write(root.join("cortex.toml"), config)?;
    root.ok(&["emit", "billing.invoice_paid", "billing", r#"{"amount": 12}"#])?;
    root.ok(&["emit", "task.escalated", "ops", "{}"])?;
    assert_eq!(root.log("custom")?.len(), 1);
    assert_eq!(root.log("task")?.len(), 1, "a custom type with a built-in prefix goes to that category's log");
    let out = root.fails(&["emit", "task.failed", "s", &format!("{{\"x\": \"{}\"}}", "y".repeat(700))])?;
    assert!(out.stderr.contains("over the 600 byte limit"), "{}", out.stderr);
    Ok(())
}

#[test]
fn batch_is_all_or_nothing_with_line_numbers() -> Result<()> {
    let root = Root::new()?;
    let good = concat!(
        r#"{"event_type": "worker.started", "source": "w1", "payload": {"worker_id": "w1"}}"#,
        "\n",
        "\n",
        r#"{"event_id": "evt_20251201_120000_abc123", "event_type": "worker.completed", "timestamp": "2025-12-01T12:00:00-06:00", "source": "w1"}"#,
        "\n",
        r#"{"event_type": "task.failed", "source": "t", "priority": "critical", "tags": ["x"], "correlation_id": "c1"}"#,
        "\n",
    );
    let out = root.run_with(&["emit", "--batch"], good.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[1], "evt_20251201_120000_abc123");
    let queue = root.files("events/queue");
    assert_eq!(queue.len(), 3);
    assert!(queue[0].starts_with("0-") && queue[0].contains(ids[2]), "critical first: {queue:?}");
    assert_eq!(root.log("task")?[0]["metadata"]["tags"], json!(["x"]));

    let before = snapshot(&root.path);
    let bad = concat!(
        r#"{"event_type": "worker.started", "source": "w1"}"#,
        "\n",
        r#"{"event_type": "nope.nope", "source": "w1"}"#,
        "\n",
        "{broken\n",
        r#"{"event_type": "task.failed", "source": "t", "timestamp": "2025-12-01T12:00:00"}"#,
        "\n",
        r#"{"event_id": "evt_20251201_120000_abc123", "event_type": "worker.completed", "timestamp": "2025-12-01T12:00:00Z", "source": "w"}"#,
        "\n",
        r#"{"event_id": "evt_20251201_120000_abc123", "event_type": "worker.completed", "timestamp": "2025-12-01T12:00:00Z", "source": "w"}"#,
        "\n",
    );
    let out = root.run_with(&["emit", "--batch"], bad.as_bytes())?;
    assert_eq!(out.code, 1);
    // Line 6 repeats line 5's event_id: a duplicate is skipped (see
    // user::an_event_id_is_queued_once_in_a_batch_and_against_the_root), not bad.
    assert!(out.stderr.contains("3 of 6 lines are bad; nothing was queued"), "{}", out.stderr);
    for line in ["line 2: event_type", "line 3: (document): malformed JSON", "line 4: timestamp"] {
        assert!(out.stderr.contains(line), "missing {line:?} in {}", out.stderr);
    }
    assert!(!out.stderr.contains("line 1:") && !out.stderr.contains("line 5:") && !out.stderr.contains("line 6:"));
    assert_eq!(before, snapshot(&root.path), "a rejected batch changed the root");
    Ok(())
}

#[test]
fn large_batch_is_group_committed_in_order() -> Result<()> {
    let root = Root::new()?;
    let input: String = (0..2000)
        .map(|i| format!("{{\"event_type\": \"task.created\", \"source\": \"s\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect();
    let out = root.run_with(&["emit", "--batch"], input.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let queue = root.files("events/queue");
    assert_eq!(queue.len(), 2000);
    // FIFO within a priority: file order is emission order.
    for (i, name) in queue.iter().enumerate().step_by(97) {
        assert_eq!(root.read_json(&format!("events/queue/{name}"))?["payload"]["n"], i);
    }
    assert_eq!(root.log("task")?.len(), 2000);
    assert!(root.files("events/tmp").is_empty());
    Ok(())
}

#[test]
fn validate_reports_one_line_per_problem() -> Result<()> {
    let root = Root::new()?;
    let good = root.scratch().join("good.json");
    std::fs::write(
        &good,
        r#"{"event_id": "evt_20251201_120000_abc123", "event_type": "worker.completed", "timestamp": "2025-12-01T12:00:00-06:00", "source": "w"}"#,
    )?;
    let out = root.ok(&["validate", good.to_str().unwrap()])?;
    assert!(out.starts_with("valid: evt_20251201_120000_abc123"), "{out}");

    let bad = r#"{"event_id": "evt_1", "event_type": "worker.done", "timestamp": "2025-12-01T12:00:00", "metadata": {"priority": "urgent", "tags": "x"}, "payload": 3}"#;
    let out = root.run_with(&["validate", "-"], bad.as_bytes())?;
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let paths: Vec<&str> = lines.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        paths,
        ["event_id", "event_type", "timestamp", "source", "metadata.priority", "metadata.tags", "payload"],
        "{}",
        out.stdout
    );
    assert!(lines[3].contains("required field is missing"));

    let out = root.run_with(&["validate"], b"[]")?;
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("expected a JSON object"));
    Ok(())
}

#[test]
fn status_reports_depth_oldest_types_and_dead_letters() -> Result<()> {
    let root = Root::new()?;
    let first = root.ok(&["emit", "worker.heartbeat", "w1", "{}", "", "low"])?;
    root.ok(&["emit", "worker.heartbeat", "w2", "{}"])?;
    root.ok(&["emit", "task.failed", "t", "{}", "", "critical"])?;
    std::fs::write(root.join("events/dead-letter/x.json"), "{}")?;
    let s: serde_json::Value = serde_json::from_str(&root.ok(&["status", "--json"])?)?;
    assert_eq!(s["queue_depth"], 3);
    assert_eq!(s["queued_by_priority"], json!({"critical": 1, "medium": 1, "low": 1}));
    assert_eq!(s["dead_letters"], 1);
    assert_eq!(s["oldest"]["event_id"], first.trim());
    assert_eq!(s["oldest"]["event_type"], "worker.heartbeat");
    assert_eq!(s["events_by_type"], json!({"task.failed": 1, "worker.heartbeat": 2}));
    let text = root.ok(&["status"])?;
    assert!(text.contains("queue depth:   3"), "{text}");
    Ok(())
}

#[test]
fn a_log_line_cut_by_a_crash_costs_only_itself() -> Result<()> {
    let root = Root::new()?;
    root.ok(&["emit", "task.created", "s", "{}"])?;
    let log = root.join("events/task-events.jsonl");
    let mut text = std::fs::read_to_string(&log)?;
    text.push_str(r#"{"event_id": "evt_2025"#);
    std::fs::write(&log, text)?;
    let out = root.run(&["status", "--json"])?;
    assert_eq!(out.code, 0);
    assert!(out.stderr.contains("partial last line"), "{}", out.stderr);
    // The next append starts on a fresh line: both whole events stay readable.
    root.ok(&["emit", "task.created", "s", "{}"])?;
    let s: serde_json::Value = serde_json::from_str(&root.ok(&["status", "--json"])?)?;
    assert_eq!(s["events_by_type"]["task.created"], 2);
    Ok(())
}

#[test]
fn library_api_mirrors_the_commands() -> Result<()> {
    let root = Root::new()?;
    let config = cortex::config::Config::load(&root.path)?;
    let queue = FsQueue::open(Layout::new(&root.path), config.validator())?;
    let producer = Producer::new(&queue, config.validator());
    let mut ids = Vec::new();
    for (t, p) in [
        ("task.created", Priority::Low),
        ("task.created", Priority::Medium),
        ("system.health_alert", Priority::Critical),
        ("task.created", Priority::Medium),
    ] {
        let e = producer.emit(NewEvent {
            event_type: t.into(),
            source: "lib".into(),
            priority: Some(p),
            ..Default::default()
        })?;
        ids.push(e.event_id);
    }
    assert!(
        producer
            .emit(NewEvent { event_type: "bogus.type".into(), source: "lib".into(), ..Default::default() })
            .is_err()
    );
    // Critical first, then FIFO within medium, then low.
    let mut order = Vec::new();
    while let Some(claim) = queue.claim()? {
        order.push(claim.event.event_id.clone());
        let record = claim.archived(cortex::records::Outcome::Handled, Vec::new());
        queue.ack(claim, record)?;
    }
    assert_eq!(order, [ids[2].clone(), ids[1].clone(), ids[3].clone(), ids[0].clone()]);
    assert_eq!(queue.depth()?.queued, 0);
    assert_eq!(root.archived()?.len(), 4);
    Ok(())
}

#[test]
fn two_claimers_never_take_the_same_event() -> Result<()> {
    let root = Root::new()?;
    let input: String = (0..400)
        .map(|i| format!("{{\"event_type\": \"task.created\", \"source\": \"s\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect();
    assert_eq!(root.run_with(&["emit", "--batch"], input.as_bytes())?.code, 0);
    let config = cortex::config::Config::load(&root.path)?;
    let taken: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let q = FsQueue::open(Layout::new(&root.path), config.validator()).unwrap();
                    let mut mine = Vec::new();
                    while let Some(c) = q.claim().unwrap() {
                        mine.push(c.event.event_id.clone());
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = taken.concat();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (400, 400), "an event was claimed twice or lost");
    assert_eq!(root.claims().len(), 400);
    Ok(())
}
