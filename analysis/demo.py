"""`make demo`: a realistic week of events in a coordination root, through
the real pipeline, so the notebooks and reports have something to show on
a fresh machine.

It runs `cortex init` when the root has no `cortex.toml`, enables the
Python cost handler (the commented `[handlers.on-cost-tracking]` table of
the default configuration) with the simulation's prices, sets the heartbeat
threshold to the simulated beat, then, day by day, queues the day's events
with `cortex emit --batch` and runs `cortex dispatch`. The handlers build
their state (`kv/state.db`, `state/...`) and the dispatcher the archive exactly as they
would for real producers; follow-up events the handlers emit carry the time
they were emitted (now), not the simulated time.

    python analysis/demo.py --root coordination --cortex target/release/cortex --days 7

The events come from `simulation.simulate` and are the same for the same
`--seed`, `--end` and sizes. A root whose archive already holds events is
refused (the week would be added on top) unless `--append` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simulation  # noqa: E402

#: `cortex dispatch` exit codes that still mean "everything was processed".
DISPATCH_OK = {0: "ok", 3: "some events were dead-lettered"}
DAILY_BUDGET_USD = 50.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.environ.get("CORTEX_ROOT", "coordination"), help="coordination root")
    p.add_argument("--cortex", default=os.environ.get("CORTEX", "cortex"), help="the cortex binary")
    p.add_argument("--handlers", help="directory of built handler components, for `cortex init --handlers`")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--tasks-per-day", type=int, default=120)
    p.add_argument("--heartbeat-minutes", type=int, default=30)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--end", help="end of the simulated period, RFC 3339 (default: now, to the minute)")
    p.add_argument("--append", action="store_true", help="add to a root whose archive already holds events")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    return p.parse_args(argv)


def parse_end(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    end = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if end.tzinfo is None:
        raise SystemExit(f"demo: --end {text!r} needs a UTC offset, e.g. {text}Z")
    return end.astimezone(dt.timezone.utc)


def configure(text: str, plan: simulation.Plan) -> tuple[str, list[str]]:
    """The default `cortex.toml` with the cost handler enabled and the
    heartbeat threshold set for the plan. Returns the new text and what could
    not be changed (a configuration edited by hand may not match)."""
    problems = []
    if not re.search(r"^\[handlers\.on-cost-tracking\]", text, re.M):
        lines = text.split("\n")
        try:
            start = lines.index("# [handlers.on-cost-tracking]")
        except ValueError:
            problems.append("no commented [handlers.on-cost-tracking] table to enable: cost data will be missing")
        else:
            end = start
            while end < len(lines) and lines[end].startswith("# "):
                lines[end] = lines[end][2:]
                end += 1
            text = "\n".join(lines)
    prices = ", ".join(
        f'{model} = {{ input = {p["input"]}, output = {p["output"]} }}' for model, p in simulation.PRICES.items()
    )
    text = re.sub(r"^prices = .*$", f"prices = {{ {prices}, default = 3.0 }}", text, count=1, flags=re.M)
    text = re.sub(r"^daily_budget_usd = .*$", f"daily_budget_usd = {DAILY_BUDGET_USD}", text, count=1, flags=re.M)
    text, n = re.subn(
        r"(\[handlers\.on-worker-heartbeat\.settings\]\nthreshold_secs = )\d+",
        rf"\g<1>{plan.heartbeat_threshold_secs}",
        text,
    )
    if n != 1:
        problems.append("no [handlers.on-worker-heartbeat.settings] threshold_secs to set: expect false timeouts")
    return text, problems


def cortex(args, binary: str, root: Path, *more: str, stdin: str | None = None, ok=(0,),
           echo=True) -> subprocess.CompletedProcess:
    cmd = [binary, "--root", str(root), *more]
    # One "handler completed" line per invocation at info: thousands here.
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    done = subprocess.run(cmd, input=stdin, text=True, capture_output=True, env=env)
    if done.returncode not in ok:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"demo: `{' '.join(cmd[:4])} ...` exited {done.returncode}")
    if echo and not args.quiet and done.stdout.strip():
        print("  " + done.stdout.strip().split("\n")[0])
    return done


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.root)
    binary = args.cortex if os.sep in args.cortex else (shutil.which(args.cortex) or args.cortex)
    if not Path(binary).exists():
        raise SystemExit(f"demo: cortex binary {binary} not found: run `make build handlers`, or pass --cortex")
    plan = simulation.Plan(end=parse_end(args.end), days=args.days, tasks_per_day=args.tasks_per_day,
                           heartbeat_minutes=args.heartbeat_minutes, seed=args.seed)
    archive = root / "events" / "archive"
    if not args.append and archive.is_dir() and any(archive.glob("*.jsonl*")):
        raise SystemExit(f"demo: {archive} already holds events: use an empty root (ROOT=...) or --append")

    init = ["init"] + (["--handlers", args.handlers] if args.handlers else [])
    if not (root / "cortex.toml").exists():
        cortex(args, binary, root, *init)
    config = root / "cortex.toml"
    text, problems = configure(config.read_text(), plan)
    for problem in problems:
        print(f"demo: warning: {problem}", file=sys.stderr)
    config.write_text(text)
    # Copies the components the enabled tables name and the root lacks.
    cortex(args, binary, root, *init)

    events = simulation.simulate(plan)
    by_day: dict[str, list[dict]] = {}
    for event in events:
        by_day.setdefault(event["timestamp"][:10], []).append(event)
    dead = 0
    for day, day_events in sorted(by_day.items()):
        if not args.quiet:
            print(f"{day}: {len(day_events)} events")
        batch = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in day_events)
        cortex(args, binary, root, "emit", "--batch", stdin=batch, echo=False)
        done = cortex(args, binary, root, "dispatch", ok=tuple(DISPATCH_OK))
        dead += done.returncode == 3
    span = f"{plan.start:%Y-%m-%d %H:%M} to {plan.end:%Y-%m-%d %H:%M} UTC"
    print(f"demo: {len(events)} events over {plan.days} days ({span})"
          f" emitted and dispatched into {root}"
          + ("; some were dead-lettered on purpose (`cortex dlq list`)" if dead else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
