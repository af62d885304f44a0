"""The optional language-model summary: a few sentences written from the
computed recommendations by an OpenAI-compatible chat endpoint, only when
the user configures one. Nothing here runs by default, and nothing but the
recommendations' text (no events, no payloads) is sent.

Configuration, from the environment:

* `CORTEX_LLM_BASE_URL`: the API base, e.g. `http://127.0.0.1:8000/v1`
  (a local server) — unset means no summary and no network call;
* `CORTEX_LLM_MODEL`: the model name the endpoint expects (required with it);
* `CORTEX_LLM_API_KEY`: sent as a bearer token when set;
* `CORTEX_LLM_TIMEOUT`: seconds, default 30.

`summarize` POSTs one `/chat/completions` request with the standard library
and returns the first choice's text; any failure is returned as a short
sentence saying so rather than raised, so a notebook or report still renders.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 30.0

    @classmethod
    def from_env(cls, env=None) -> Endpoint | None:
        """The configured endpoint, or None when `CORTEX_LLM_BASE_URL` is unset."""
        env = os.environ if env is None else env
        base = (env.get("CORTEX_LLM_BASE_URL") or "").strip()
        if not base:
            return None
        model = (env.get("CORTEX_LLM_MODEL") or "").strip()
        if not model:
            raise ValueError("CORTEX_LLM_BASE_URL is set but CORTEX_LLM_MODEL is not: name the model to use")
        return cls(base.rstrip("/"), model, env.get("CORTEX_LLM_API_KEY") or None,
                   float(env.get("CORTEX_LLM_TIMEOUT") or 30))


SYSTEM = ("You summarise operational findings of an event-processing system for its operators. "
          "Use only the findings given; keep every number as given; at most five sentences; plain text.")


def prompt(title: str, findings: list[str]) -> list[dict]:
    body = f"{title}\n\nFindings:\n" + "\n".join(f"- {f}" for f in findings)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def summarize(title: str, findings: list[str], endpoint: Endpoint | None = None, env=None) -> str | None:
    """A short summary of `findings`, or None when no endpoint is configured."""
    endpoint = endpoint or Endpoint.from_env(env)
    if endpoint is None:
        return None
    request = urllib.request.Request(
        f"{endpoint.base_url}/chat/completions",
        data=json.dumps({"model": endpoint.model, "messages": prompt(title, findings), "temperature": 0.2}).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:
            answer = json.load(response)
        return answer["choices"][0]["message"]["content"].strip()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        return f"(no summary: the model endpoint {endpoint.base_url} could not be reached: {e})"
    except (ValueError, KeyError, IndexError, TypeError):
        return f"(no summary: the model endpoint {endpoint.base_url} answered in an unexpected shape)"
