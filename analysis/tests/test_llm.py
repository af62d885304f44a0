"""The optional language-model summary against a local stub of an
OpenAI-compatible endpoint: what is sent, what comes back, failures that
still let a page render, and that nothing is called unless configured."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import ANALYSIS

import cortexdata as cd


class Stub:
    """A chat-completions endpoint on loopback that records each request."""

    def __init__(self, answer: dict | bytes):
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                      "body": json.loads(body)})
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reply(text):
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def stub():
    s = Stub(reply("  Routing is drifting at code-master.  "))
    yield s
    s.close()


def test_nothing_is_called_without_configuration(stub):
    assert cd.llm.summarize("t", ["a finding"], env={}) is None
    assert cd.llm.Endpoint.from_env({"CORTEX_LLM_MODEL": "m"}) is None
    assert stub.requests == []


def test_a_configured_endpoint_gets_the_findings_and_its_answer_is_returned(stub):
    env = {"CORTEX_LLM_BASE_URL": stub.url + "/", "CORTEX_LLM_MODEL": "local-model", "CORTEX_LLM_API_KEY": "k1"}
    text = cd.llm.summarize("Routing optimization", ["refactor-expert fell 18%"], env=env)
    assert text == "Routing is drifting at code-master."
    [request] = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer k1"
    assert request["body"]["model"] == "local-model"
    assert "- refactor-expert fell 18%" in request["body"]["messages"][1]["content"]


def test_a_model_is_required_with_the_url():
    with pytest.raises(ValueError, match="CORTEX_LLM_MODEL"):
        cd.llm.Endpoint.from_env({"CORTEX_LLM_BASE_URL": "http://127.0.0.1:9/v1"})


def test_failures_become_a_sentence_not_an_exception():
    bad = Stub(b'{"unexpected": true}')
    try:
        text = cd.llm.summarize("t", ["x"], cd.llm.Endpoint(bad.url, "m"))
        assert "unexpected shape" in text
    finally:
        bad.close()
    gone = cd.llm.Endpoint("http://127.0.0.1:9/v1", "m", timeout=2)
    assert "could not be reached" in cd.llm.summarize("t", ["x"], gone)


def test_a_notebook_adds_the_summary_when_configured(demo, stub, tmp_path):
    out = tmp_path / "figures.json"
    env = {"PATH": "/usr/bin:/bin", "CORTEX_LLM_BASE_URL": stub.url, "CORTEX_LLM_MODEL": "local-model"}
    done = subprocess.run([sys.executable, str(ANALYSIS / "worker-performance.py"), "--root", str(demo.root),
                           *demo.period_args, "--figures", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["llm_summary"] == "Routing is drifting at code-master."
    [request] = stub.requests
    sent = request["body"]["messages"][1]["content"]
    assert all(f"- {r}" in sent for r in figures["recommendations"]), "the findings, and only them, are sent"
