"""A VLM judge served through the OpenAI-compatible chat completions API of vLLM and SGLang (standard library only).

Spec: `JUDGE:URL`, e.g. `vlm:http://127.0.0.1:8000/v1` (a URL with no path gets `/v1`). Settings ride in the URL's
query: `model=` (default: the one model the server lists), `concurrency=` (requests in flight, default 8),
`timeout=` (seconds per request, default 60), `retries=` (default 3), `top_logprobs=` (default 20, vLLM's default
limit), `api_key_env=` (the NAME of an environment variable holding the server's API key, sent as a Bearer token;
the key itself never appears in a spec, a config.yaml or a manifest). `--reward-url` builds such a URL
(stages/reward_options.py). Each image (a pairwise judge: each pair in each order) is one request: its message is the
image(s) as PNG data URLs (after Qwen's fetch_image resize) then the judge's question; `max_tokens: 1, temperature: 0,
logprobs: true, top_logprobs: N`; the score is the judge's formula over the answer words found among the first token's
top N (an answer outside the top N counts as p = 0).
A batch's requests run concurrently (a thread pool of `concurrency`). Connection failures, timeouts, HTTP 429 and 5xx
are retried `retries` times with exponential backoff (0.5 s, 1 s, 2 s, ... at most 8 s); other HTTP errors are not.
Before any image is made, `probe` asks GET /models, so a server that is down fails in a second, naming the fix, and
preflight (`ServedJudge.preflight`) asks the judge's question about one grey test image, so a served model that takes
no images (not a VLM) or a server that answers without log-probabilities fails before any model loads.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aifeedback.errors import AifError
from aifeedback.scoring.scorers.base import Scorer
from aifeedback.scoring.scorers.vlm_judges import JUDGES, PairJudging, QwenImage, merge_logprobs

START = ("Fix: start it, e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --max-logprobs 20` or "
         "`python -m sglang.launch_server --model-path Qwen/Qwen2.5-VL-7B-Instruct --port 8000`, or correct the URL "
         "(JUDGE:http://HOST:PORT/v1)")
SETTINGS = {"model": str, "concurrency": int, "timeout": float, "retries": int, "top_logprobs": int,
            "api_key_env": str}
MAX_BACKOFF = 8.0


class ServerError(AifError):
    """The VLM server is unreachable, refused a request or answered without what a judge needs."""


def is_url(model: str | None) -> bool:
    return bool(model) and model.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class Server:
    """Where and how to ask: the API base (ending /v1 unless given otherwise) and the request settings."""

    base: str
    model: str | None = None
    concurrency: int = 8
    timeout: float = 60.0
    retries: int = 3
    top_logprobs: int = 20
    api_key_env: str | None = None

    @classmethod
    def parse(cls, spec: str, url: str) -> Server:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        bad = sorted(set(query) - set(SETTINGS))
        if bad:
            raise ServerError(f"scorer '{spec}': unknown setting(s) {', '.join(bad)} in the URL. Fix: use "
                              f"{', '.join(k + '=' for k in SETTINGS)} (e.g. {parts.scheme}://{parts.netloc}/v1?"
                              f"concurrency=16&timeout=120).")
        values = {}
        for key, vals in query.items():
            try:
                values[key] = SETTINGS[key](vals[-1])
            except ValueError:
                raise ServerError(f"scorer '{spec}': {key}={vals[-1]} is not a {SETTINGS[key].__name__}. Fix: give "
                                  f"a number, e.g. {key}=8.") from None
            if SETTINGS[key] is not str and values[key] < (0 if key == "retries" else 1e-9):
                raise ServerError(f"scorer '{spec}': {key}={vals[-1]} must be positive. Fix: e.g. {key}=8.")
        env = values.get("api_key_env")
        if env is not None and not os.environ.get(env):
            raise ServerError(f"scorer '{spec}': the environment variable {env} that should hold the server's API key "
                              f"(--reward-api-key-env / api_key_env=) is not set or empty. Fix: export {env}=YOUR_KEY "
                              f"before running, or drop the option for a server without a key.")
        path = parts.path.rstrip("/") or "/v1"
        return cls(urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), **values)

    def headers(self) -> dict[str, str]:
        """The API key (read from the environment now, never stored) as a Bearer token, when one is named."""
        return {"Authorization": f"Bearer {os.environ[self.api_key_env]}"} if self.api_key_env else {}

    def get(self, path: str):
        return _json(urllib.request.Request(self.base + path, headers=self.headers()), self.timeout)

    def post(self, path: str, body: dict):
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data,
                                     headers={"Content-Type": "application/json", **self.headers()})
        return _json(req, self.timeout)


def _json(req, timeout: float):
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def probe(spec: str, server: Server) -> str:
    """GET /models once (no retries, at most 5 s): the model the requests will name; a clear error when the server is
    down, is not an OpenAI-compatible API, or does not serve the model asked for."""
    try:
        listing = Server(server.base, timeout=min(server.timeout, 5.0), api_key_env=server.api_key_env).get("/models")
        served = [m["id"] for m in listing["data"]]
    except urllib.error.HTTPError as e:  # reachable, but no model list at that path
        if e.code in (401, 403):
            raise ServerError(f"scorer '{spec}': the server at {server.base} refused the API key (HTTP {e.code}). "
                              f"Fix: pass --reward-api-key-env NAME (api_key_env=NAME in a URL) naming the "
                              f"environment variable that holds its key, and check the key.") from None
        raise ServerError(f"scorer '{spec}': {server.base}/models did not answer an OpenAI-compatible model list "
                          f"(HTTP {e.code}). Fix: give the API base of a vLLM or SGLang server (usually "
                          f"http://HOST:PORT/v1).") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ServerError(f"scorer '{spec}': the VLM server at {server.base} could not be reached (GET "
                          f"{server.base}/models: {reason}). {START}.") from None
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"scorer '{spec}': {server.base}/models did not answer an OpenAI-compatible model list. "
                          f"Fix: give the API base of a vLLM or SGLang server (usually http://HOST:PORT/v1).") from None
    if server.model is not None and server.model not in served:
        raise ServerError(f"scorer '{spec}': the server at {server.base} serves {', '.join(served) or 'no model'}, "
                          f"not '{server.model}'. Fix: ?model= one of those, or serve that model.")
    if server.model is None and len(served) != 1:
        raise ServerError(f"scorer '{spec}': the server at {server.base} serves {len(served)} models "
                          f"({', '.join(served)}). Fix: name one in the URL, ...?model=NAME.")
    return server.model or served[0]


class ServedJudge(PairJudging, Scorer):
    """A judge (vlm_judges.JUDGES) answered by a server; see the module docstring. A pairwise judge's items are
    (first, second) pairs of data URLs, both images in one message before the question."""

    def __init__(self, name: str, judge: str, url: str):
        self.name, self.judge = name, JUDGES[judge]
        self.server = Server.parse(name, url)
        self.model = probe(name, self.server)
        self.uses_prompt = self.judge.uses_prompt
        self.transform = QwenImage(data_url=True)

    def preflight(self) -> None:
        """Ask the judge's question about a grey 56x56 test image (two for a pairwise judge), as scoring will: a
        model that takes no images, or a server without log-probabilities, fails here, before any image is made."""
        from PIL import Image

        url = self.transform(Image.new("RGB", (56, 56), (128, 128, 128)))
        self._score_one((url, url) if self.judge.pairwise else url, "a grey square")

    def score_items(self, items: list, prompts: list[str]) -> list[float]:
        with ThreadPoolExecutor(max_workers=min(self.server.concurrency, max(1, len(items)))) as pool:
            return list(pool.map(self._score_one, items, prompts))

    def body(self, image_url: str | tuple[str, ...], prompt: str) -> dict:
        urls = image_url if isinstance(image_url, tuple) else (image_url,)
        content = [*({"type": "image_url", "image_url": {"url": url}} for url in urls),
                   {"type": "text", "text": self.judge.ask(prompt)}]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
                "temperature": 0.0, "logprobs": True, "top_logprobs": self.server.top_logprobs}

    def _score_one(self, image_url: str, prompt: str) -> float:
        reply = self._request(self.body(image_url, prompt))
        try:
            first = reply["choices"][0]["logprobs"]["content"][0]
            top = [(t["token"], float(t["logprob"])) for t in first["top_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError):
            top = []
        if not top:
            raise ServerError(f"scorer '{self.name}': the server at {self.server.base} answered without "
                              f"log-probabilities (choices[0].logprobs.content[0].top_logprobs is missing or empty). "
                              f"Fix: serve with log-probabilities allowed (vLLM: --max-logprobs >= "
                              f"{self.server.top_logprobs}; SGLang returns them by default), or lower ?top_logprobs=.")
        score = self.judge.score(merge_logprobs(top))
        if score is None:
            tokens = ", ".join(repr(t) for t, _ in top[:5])
            raise ServerError(f"scorer '{self.name}': none of the answers ({', '.join(self.judge.words())}) is among "
                              f"the first token's top {len(top)} ({tokens}, ...). Fix: raise ?top_logprobs=, or serve "
                              f"an instruction-following VLM (e.g. Qwen/Qwen2.5-VL-7B-Instruct).")
        return score

    def _request(self, body: dict) -> dict:
        """POST /chat/completions with bounded retries: 1 + retries attempts at most."""
        for attempt in range(self.server.retries + 1):
            try:
                return self.server.post("/chat/completions", body)
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code != 429 and e.code < 500:
                    raise ServerError(f"scorer '{self.name}': the server at {self.server.base} refused the request "
                                      f"(HTTP {e.code}: {detail}). Fix: check that it serves a vision-language model "
                                      f"('{self.model}' must accept images: a text-only model is refused; serve e.g. "
                                      f"Qwen/Qwen2.5-VL-7B-Instruct) and allows logprobs.") from None
                problem = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as e:
                problem = str(getattr(e, "reason", e)) or type(e).__name__
            except ValueError:  # HTTP 200 with a body that is not JSON
                raise ServerError(f"scorer '{self.name}': {self.server.base}/chat/completions answered something that "
                                  f"is not JSON. Fix: give the API base of a vLLM or SGLang server (usually "
                                  f"http://HOST:PORT/v1).") from None
            if attempt < self.server.retries:
                time.sleep(min(MAX_BACKOFF, 0.5 * 2 ** attempt))
        raise ServerError(f"scorer '{self.name}': {self.server.retries + 1} attempt(s) at {self.server.base}"
                          f"/chat/completions failed, the last with: {problem}. Fix: check the server's log and "
                          f"load; raise ?timeout= (now {self.server.timeout:g} s) or ?retries=, or lower "
                          f"?concurrency= (now {self.server.concurrency}).")
