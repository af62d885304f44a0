"""cortexdata: the analysis behind the notebooks (`analysis/*.py`) and the
reports (`reports/`), importable and unit-tested on its own.

* `load`: a coordination root read into polars frames for one `Period`
  (`Dataset`: events, worker runs, failures, routing decisions, scans,
  findings, the security register, alerts, the cost ledger, dead letters);
* `routing`, `security`, `workers`, `cost`: statistics per area, each with
  a `recommendations(data)` list of concrete, computed advice and the rules
  it applies in its module docs;
* `summary`: the period's named figures and the executive highlights;
* `charts`: Altair charts of those frames, and `svg()` to inline them;
* `llm`: the optional language-model summary (off unless configured);
* `options`: the root and period from arguments, and headless figures out.
"""

from . import charts, cost, llm, options, routing, security, summary, workers
from .load import SEVERITIES, Dataset, Period, Root, parse_time

__all__ = ["SEVERITIES", "Dataset", "Period", "Root", "parse_time",
           "charts", "cost", "llm", "options", "routing", "security", "summary", "workers"]
