"""The tinker backend: Tinker's own SDK (`tinker.ServiceClient`) behind evsys's surface.

The SDK already speaks the surface; this module adds what a run needs around it:
- a preflight before any client is made — one short HTTP request for the server's
  capabilities — so a missing or rejected key, an unreachable service or an unknown model is
  a one-line BackendError that says what to do, instead of minutes of SDK retries;
- futures whose `.result()` turns SDK exceptions into the same one-line errors;
- `save_state(path)` takes the last path component as the Tinker checkpoint name (the
  local backend takes a directory) and returns the tinker:// path to resume from;
- `load_state(path)` (weights) and `load_state_with_optimizer(path)` (weights and optimizer)
  re-create the training client from the checkpoint (the SDK's `load_state` is deprecated);
- `base_sampling_client()` = `create_sampling_client(base_model=...)`.
Configuration: TINKER_API_KEY (required) and TINKER_BASE_URL (optional).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping, Sequence

import httpx
import tinker
from tinker import types
from tinker.lib.base_url import resolve_base_url

from evsys_core.errors import BackendError

CAPABILITIES_PATH = "/api/v1/get_server_capabilities"
USE_LOCAL = "or use `backend.kind: local`"


def _no_key() -> BackendError:
    return BackendError("TINKER_API_KEY is not set: export TINKER_API_KEY=<your key from the "
                        f"Tinker console>, {USE_LOCAL}")


def _bad_key(url: str, status: int) -> BackendError:
    return BackendError(f"Tinker rejected TINKER_API_KEY (HTTP {status} from {url}): set a valid "
                        f"key in TINKER_API_KEY, {USE_LOCAL}")


def _unreachable(url: str, why: str) -> BackendError:
    return BackendError(f"cannot reach Tinker at {url} ({why}): check the network and "
                        f"TINKER_BASE_URL, {USE_LOCAL}")


def translate(error: BaseException, base_url: str) -> BackendError:
    """One-line BackendError for an SDK exception."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if isinstance(error, (tinker.AuthenticationError, tinker.PermissionDeniedError)):
        return _bad_key(base_url, error.status_code)
    if isinstance(error, tinker.APIConnectionError):
        return _unreachable(base_url, first_line)
    if isinstance(error, tinker.APIStatusError):
        return BackendError(f"Tinker answered HTTP {error.status_code}: {first_line}")
    return BackendError(f"Tinker request failed: {first_line}")


class _Future:
    """An SDK future whose errors come out as BackendError."""

    def __init__(self, inner: Any, base_url: str, post: Callable[[Any], Any] | None = None):
        self._inner, self._url, self._post = inner, base_url, post

    def result(self, timeout: float | None = None) -> Any:
        value = _call(lambda: self._inner.result(timeout=timeout), self._url)
        return self._post(value) if self._post else value


def _call(fn: Callable[[], Any], base_url: str) -> Any:
    try:
        return fn()
    except BackendError:
        raise
    except tinker.TinkerError as e:
        raise translate(e, base_url) from e


class TinkerService:
    """Makes Tinker training and sampling clients, after a fast preflight."""

    def __init__(self, *, seed: int = 0, api_key: str | None = None, base_url: str | None = None,
                 timeout_s: float = 15.0):
        self.api_key = api_key or os.environ.get("TINKER_API_KEY")
        if not self.api_key:
            raise _no_key()
        self.base_url = resolve_base_url(base_url)
        self.seed, self.timeout_s = seed, timeout_s
        self._sdk: tinker.ServiceClient | None = None
        self._served: dict[str, Any] | None = None

    # --- preflight ---------------------------------------------------------------------------
    def supported_models(self) -> list[str]:
        """Names of the models the service serves (one HTTP request, cached)."""
        return list(self._capabilities())

    def _capabilities(self) -> dict[str, Any]:
        if self._served is not None:
            return self._served
        url = self.base_url + CAPABILITIES_PATH
        try:
            resp = httpx.get(url, headers={"X-API-Key": self.api_key}, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise _unreachable(self.base_url, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        if resp.status_code in (401, 403):
            raise _bad_key(self.base_url, resp.status_code)
        if resp.status_code != 200:
            raise BackendError(f"Tinker answered HTTP {resp.status_code} at {url}: {resp.text[:200]}")
        try:
            caps = types.GetServerCapabilitiesResponse.model_validate(resp.json())
        except ValueError as e:
            raise BackendError(f"unexpected answer from {url} (is TINKER_BASE_URL right?): {e}") from e
        self._served = {m.model_name: m for m in caps.supported_models if m.model_name}
        return self._served

    def _check_model(self, name: str, training: bool) -> None:
        served = self._capabilities()
        model = served.get(name)
        if model is None:
            raise BackendError(f"Tinker does not serve {name!r}; pick a model from: "
                               f"{', '.join(sorted(served)) or '(none listed)'} — {USE_LOCAL}")
        if training and model.trainable is False:
            raise BackendError(f"Tinker serves {name!r} for sampling only; pick a trainable model")

    def close(self) -> None:
        """End the Tinker session, if one was started (best effort)."""
        if self._sdk is not None:
            sdk, self._sdk = self._sdk, None
            try:
                sdk.close("success").result(timeout=self.timeout_s)
            except Exception:  # the session expires on its own
                pass

    def _client(self) -> tinker.ServiceClient:
        if self._sdk is None:
            self._sdk = tinker.ServiceClient(api_key=self.api_key, base_url=self.base_url)
        return self._sdk

    # --- the surface -------------------------------------------------------------------------
    def create_lora_training_client(self, base_model: str, rank: int = 8,
                                    seed: int | None = None) -> "TinkerTrainingClient":
        self._check_model(base_model, training=True)
        seed = self.seed if seed is None else seed
        tc = _call(lambda: self._client().create_lora_training_client(
            base_model=base_model, rank=rank, seed=seed).result(), self.base_url)
        return TinkerTrainingClient(self, tc, base_model)

    def create_sampling_client(self, base_model: str | None = None,
                               model_path: str | None = None) -> "TinkerSamplingClient":
        if base_model is None and model_path is None:
            raise BackendError("create_sampling_client needs base_model or model_path")
        if model_path is None:
            self._check_model(base_model, training=False)
        else:
            self._capabilities()  # the preflight: key and network
        sc = _call(lambda: self._client().create_sampling_client(
            base_model=base_model, model_path=model_path).result(), self.base_url)
        return TinkerSamplingClient(sc, self.base_url)


class TinkerTrainingClient:
    """The SDK's TrainingClient, with evsys's error messages and state paths."""

    def __init__(self, service: TinkerService, tc: Any, base_model: str):
        self._service, self._tc, self.base_model = service, tc, base_model
        self._tokenizer: Any = None

    def get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _call(self._tc.get_tokenizer, self._service.base_url)
        return self._tokenizer

    def forward_backward(self, data: Sequence[types.Datum], loss_fn: str,
                         loss_fn_config: Mapping[str, float] | None = None) -> _Future:
        return self._wrap(lambda: self._tc.forward_backward(list(data), loss_fn, loss_fn_config))

    def forward(self, data: Sequence[types.Datum], loss_fn: str,
                loss_fn_config: Mapping[str, float] | None = None) -> _Future:
        return self._wrap(lambda: self._tc.forward(list(data), loss_fn, loss_fn_config))

    def optim_step(self, adam_params: types.AdamParams | None = None) -> _Future:
        return self._wrap(lambda: self._tc.optim_step(adam_params or types.AdamParams()))

    def save_state(self, name: str, **kw: Any) -> _Future:
        """Save weights + optimizer under the last component of `name` (replacing a checkpoint
        of that name, as the local backend does); the result's `.path` is tinker://..."""
        kw.setdefault("overwrite", True)
        return self._wrap(lambda: self._tc.save_state(PurePosixPath(name).name, **kw))

    def load_state(self, path: str) -> _Future:
        """Continue from a tinker:// checkpoint's weights, with a fresh optimizer (Tinker's)."""
        return self._reload(path, "create_training_client_from_state")

    def load_state_with_optimizer(self, path: str) -> _Future:
        """Continue from a tinker:// checkpoint, weights and optimizer state both."""
        return self._reload(path, "create_training_client_from_state_with_optimizer")

    def _reload(self, path: str, method: str) -> _Future:
        if not path.startswith("tinker://"):
            raise BackendError(f"{path} is not a Tinker checkpoint (tinker://...); a local state "
                               "directory loads with backend.kind: local")
        sdk = self._service._client()
        self._tc = _call(lambda: getattr(sdk, method)(path).result(), self._service.base_url)
        return _Future(_Ready(types.LoadWeightsResponse(path=path)), self._service.base_url)

    def save_weights_and_get_sampling_client(self, name: str | None = None) -> "TinkerSamplingClient":
        sc = _call(lambda: self._tc.save_weights_and_get_sampling_client().result(), self._service.base_url)
        return TinkerSamplingClient(sc, self._service.base_url)

    def create_sampling_client(self, model_path: str) -> "TinkerSamplingClient":
        return self._service.create_sampling_client(model_path=model_path)

    def base_sampling_client(self) -> "TinkerSamplingClient":
        return self._service.create_sampling_client(base_model=self.base_model)

    def _wrap(self, submit: Callable[[], Any]) -> _Future:
        return _Future(_call(submit, self._service.base_url), self._service.base_url)


class TinkerSamplingClient:
    """The SDK's SamplingClient, with evsys's error messages."""

    def __init__(self, sc: Any, base_url: str):
        self._sc, self._url = sc, base_url
        self._tokenizer: Any = None

    def get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _call(self._sc.get_tokenizer, self._url)
        return self._tokenizer

    def get_base_model(self) -> str:
        return _call(self._sc.get_base_model, self._url)

    def sample(self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams,
               include_prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0,
               prompt_logprobs_last_n: int | None = None) -> _Future:
        extra = {} if prompt_logprobs_last_n is None else {"prompt_logprobs_last_n": prompt_logprobs_last_n}
        return _Future(_call(lambda: self._sc.sample(
            prompt, num_samples, sampling_params, include_prompt_logprobs=include_prompt_logprobs,
            topk_prompt_logprobs=topk_prompt_logprobs, **extra), self._url), self._url)

    def compute_logprobs(self, prompt: types.ModelInput) -> _Future:
        return _Future(_call(lambda: self._sc.compute_logprobs(prompt), self._url), self._url)


class _Ready:
    def __init__(self, value: Any):
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value
