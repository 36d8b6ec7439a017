"""The tinker backend, exercised through its network seam only.

TEST DOUBLE — the one allowed in this suite: `FakeTinkerHTTP` is a real HTTP server on
localhost that answers the Tinker REST endpoints the real `tinker` SDK calls. Everything above
the network (evsys's backend, the SDK, httpx) is the real code; the tests check the requests
it sends and the errors it raises.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tinker import types

from evsys_core.backends import get_service, tinker_models
from evsys_core.backends.tinker_backend import TinkerService
from evsys_core.errors import BackendError

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
KEY = "tml-good-key"


class FakeTinkerHTTP:
    """TEST DOUBLE: Tinker's REST API at the HTTP seam (JSON endpoints only)."""

    def __init__(self, models=(MODEL,), create_model_error: str | None = None):
        self.models, self.create_model_error = list(models), create_model_error
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._answer(None)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                self._answer(body)

            def _answer(self, body):
                path = self.path.split("?")[0]
                fake.requests.append({"method": self.command, "path": path, "body": body,
                                      "key": self.headers.get("X-API-Key")})
                code, obj = fake.route(path, self.headers.get("X-API-Key"), body)
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def body(self, path: str) -> Any:
        return next(r["body"] for r in self.requests if r["path"] == path)

    def route(self, path: str, key: str | None, body: Any) -> tuple[int, Any]:
        if key != KEY:
            return 401, {"detail": "Invalid API key"}
        pending = {"req-model": {"type": "create_model", "model_id": "model-1"},
                   "req-optim": {"type": "optim_step", "metrics": {}},
                   "req-save": {"type": "save_weights", "path": "tinker://model-1/weights/step_2"}}
        answers = {
            "/api/v1/client/config": {"use_pyqwest_transport": False},
            "/api/v1/client/dynamic_config": {},
            "/api/v1/create_session": {"session_id": "session-1"},
            "/api/v1/session_heartbeat": {},
            "/api/v1/telemetry": {},
            "/api/v1/get_server_capabilities": {"supported_models": [
                {"model_name": m, "trainable": True, "sampleable": True} for m in self.models]},
            "/api/v1/create_model": {"request_id": "req-model", "model_id": "model-1"},
            "/api/v1/optim_step": {"request_id": "req-optim", "model_id": "model-1"},
            "/api/v1/save_weights": {"request_id": "req-save", "model_id": "model-1"},
            "/api/v1/get_info": {"model_id": "model-1", "model_data": {"model_name": MODEL},
                                 "is_lora": True},
        }
        if path == "/api/v1/create_model" and self.create_model_error:
            return 400, {"detail": self.create_model_error}
        if path == "/api/v1/retrieve_future":
            return 200, pending[body["request_id"]]
        if path in answers:
            return 200, answers[path]
        return 404, {"detail": f"no such endpoint {path}"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeTinkerHTTP()
    yield server
    server.close()


@pytest.fixture
def env(monkeypatch, fake):
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", fake.url)
    return fake


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_missing_key_says_to_set_it(monkeypatch):
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(BackendError) as e:
        get_service("tinker")
    assert "TINKER_API_KEY is not set" in one_line(e) and "backend.kind: local" in one_line(e)


def test_rejected_key_is_reported_before_any_session(env, monkeypatch):
    monkeypatch.setenv("TINKER_API_KEY", "tml-wrong")
    service = get_service("tinker")
    with pytest.raises(BackendError) as e:
        service.create_lora_training_client(MODEL, rank=8)
    assert "rejected TINKER_API_KEY (HTTP 401" in one_line(e)
    assert env.paths() == ["/api/v1/get_server_capabilities"]
    assert env.requests[0]["key"] == "tml-wrong"


def test_unknown_model_lists_the_served_ones(env):
    service = get_service("tinker")
    with pytest.raises(BackendError) as e:
        service.create_lora_training_client("Qwen/No-Such-Model", rank=8)
    assert f"does not serve 'Qwen/No-Such-Model'; pick a model from: {MODEL}" in one_line(e)
    with pytest.raises(BackendError, match="does not serve"):
        service.create_sampling_client(base_model="Qwen/No-Such-Model")
    assert "/api/v1/create_session" not in env.paths()


def test_unreachable_service_fails_fast(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(BackendError) as e:
        get_service("tinker").create_lora_training_client(MODEL)
    assert f"cannot reach Tinker at http://127.0.0.1:{port}" in one_line(e)
    assert "backend.kind: local" in one_line(e)
    assert time.monotonic() - start < 10


def test_training_client_requests(env):
    service = get_service("tinker", seed=3)
    try:
        tc = service.create_lora_training_client(MODEL, rank=4)
        create = env.body("/api/v1/create_model")
        assert create["base_model"] == MODEL
        assert create["lora_config"]["rank"] == 4 and create["lora_config"]["seed"] == 3
        assert all(r["key"] == KEY for r in env.requests)

        tc.optim_step(types.AdamParams(learning_rate=2e-4, grad_clip_norm=1.0)).result()
        adam = env.body("/api/v1/optim_step")["adam_params"]
        assert adam["learning_rate"] == 2e-4 and adam["grad_clip_norm"] == 1.0

        saved = tc.save_state("/runs/r1/checkpoints/step_2").result()
        request = env.body("/api/v1/save_weights")
        assert request["path"] == "step_2" and request["overwrite"] is True
        assert saved.path == "tinker://model-1/weights/step_2"
        with pytest.raises(BackendError, match="not a Tinker checkpoint"):
            tc.load_state("/runs/r1/checkpoints/step_2")
    finally:
        service.close()


def test_server_side_failure_is_one_line(monkeypatch):
    server = FakeTinkerHTTP(create_model_error="base model is not available to your organization")
    try:
        monkeypatch.setenv("TINKER_API_KEY", KEY)
        monkeypatch.setenv("TINKER_BASE_URL", server.url)
        service = get_service("tinker")
        with pytest.raises(BackendError) as e:
            service.create_lora_training_client(MODEL)
        assert "Tinker answered HTTP 400" in one_line(e) and "not available" in one_line(e)
        service.close()
    finally:
        server.close()


def test_refresh_known_models_caches_what_the_service_serves(env, monkeypatch, tmp_path):
    monkeypatch.setenv("EVSYS_CACHE", str(tmp_path))
    monkeypatch.setattr(tinker_models, "KNOWN_TINKER_MODELS", tinker_models.KNOWN_TINKER_MODELS)
    env.models.append("acme/Brand-New-7B")
    known = tinker_models.refresh_known_models(TinkerService())
    assert "acme/Brand-New-7B" in known and MODEL in known
    assert "acme/Brand-New-7B" in json.loads((tmp_path / "tinker_models.json").read_text())["models"]
    assert tinker_models._cached_models() == (MODEL, "acme/Brand-New-7B")

    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9")  # unreachable: list unchanged
    assert tinker_models.refresh_known_models(TinkerService()) == known
