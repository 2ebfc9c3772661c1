"""VLM judges served through the OpenAI-compatible API: a real HTTP server on 127.0.0.1, started by the test, that
speaks GET /v1/models and POST /v1/chat/completions (logprobs), and fails on request."""

import base64
import io
import json
import math
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from aifeedback.preflight import check_scorers
from aifeedback.scoring.scorers import load_scorer
from aifeedback.scoring.scorers.vlm_judges import JUDGES, QwenImage
from aifeedback.scoring.scorers.vlm_served import ServerError

# What the fake model answers: P(Yes) 0.5 + P(" yes") 0.1 vs P(No) 0.2 -> 0.75; "The" takes the rest.
TOP = [{"token": "Yes", "logprob": math.log(0.5)}, {"token": " yes", "logprob": math.log(0.1)},
       {"token": "No", "logprob": math.log(0.2)}, {"token": "The", "logprob": math.log(0.2)}]


class Fake:
    """The server's behaviour: `script` is consumed one action per chat request ("ok" once it is empty)."""

    def __init__(self):
        self.script: list[str] = []
        self.models = ["judge-model"]
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.delay = 0.0
        self.by_red = False  # P(Yes) = 0.01 + 0.98 * the image's mean red, P(No) the rest; with two images
        # P("1") = 0.6 + 0.3 * (red of the first - red of the second): the redder one wins, and the first position
        # is favoured by 0.1 (a position bias that averaging both orders cancels), P("2") the rest
        self.key = None  # an API key the requests must carry as a Bearer token
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def next_action(self, body):
        with self.lock:
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.pop(0) if self.script else "ok"


def handler(fake: Fake):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def refused(self):
            fake.auth.append(self.headers.get("Authorization"))
            if fake.key is not None and self.headers.get("Authorization") != f"Bearer {fake.key}":
                self.reply(401, {"error": {"message": "bad key"}})
                return True
            return False

        def do_GET(self):
            if self.refused():
                return
            if self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            if self.refused():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            action = fake.next_action(body)
            try:
                if action == "html":
                    data = b"<html>a proxy page</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                time.sleep(fake.delay if action != "slow" else 2.0)
                if action in ("500", "400"):
                    return self.reply(int(action), {"error": {"message": f"fake {action}"}})
                logprobs = None if action == "nologprobs" else {"content": [{"token": "Yes", "logprob": -0.69,
                                                                            "top_logprobs": TOP}]}
                if self.by_red_image(body, logprobs):
                    pass
                elif action == "noanswer":
                    logprobs["content"][0]["top_logprobs"] = [{"token": "The", "logprob": -0.1}]
                choice = {"index": 0, "message": {"role": "assistant", "content": "Yes"}, "logprobs": logprobs,
                          "finish_reason": "length"}
                self.reply(200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]})
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass
            finally:
                with fake.lock:
                    fake.in_flight -= 1

        def by_red_image(self, body, logprobs):
            if not fake.by_red or logprobs is None:
                return False
            reds = [red_of(part["image_url"]["url"]) for part in body["messages"][0]["content"] if "image_url" in part]
            if len(reds) == 2:
                p1 = 0.6 + 0.3 * (reds[0] - reds[1])
                logprobs["content"][0]["top_logprobs"] = [{"token": "1", "logprob": math.log(p1)},
                                                          {"token": "2", "logprob": math.log(1 - p1)}]
                return True
            red = reds[0]
            logprobs["content"][0]["top_logprobs"] = [{"token": "Yes", "logprob": math.log(0.01 + 0.98 * red)},
                                                      {"token": "No", "logprob": math.log(0.99 - 0.98 * red)}]
            return True

    return Handler


def red_of(data_url: str) -> float:
    data = data_url.split(",", 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.float64)[..., 0].mean() / 255


@pytest.fixture
def server():
    with fake_server() as served:
        yield served


@contextmanager
def fake_server():
    """(the server's http://127.0.0.1:PORT, its Fake) while the server runs."""
    fake = Fake()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(fake))
    httpd.daemon_threads, httpd.block_on_close = True, False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", fake
    httpd.shutdown()
    httpd.server_close()


def images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 90, 3), dtype=np.uint8)) for i in range(n)]


def test_scores_are_p_yes_over_yes_and_no_and_requests_are_the_api(server):
    url, fake = server
    s = load_scorer(f"vlm:{url}/v1")
    ims = images(3)
    assert s.score(ims, ["a cat", "a dog", "a cow"]) == pytest.approx([0.75] * 3)
    assert len(fake.bodies) == 3
    body = next(b for b in fake.bodies if "a cat" in b["messages"][0]["content"][1]["text"])  # requests run at once
    assert body["model"] == "judge-model" and body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["temperature"] == 0.0
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": JUDGES["vlm"].ask("a cat")}
    png = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"].split(",", 1)[1])))
    assert np.array_equal(np.array(png), np.array(QwenImage()(ims[0])))  # fetch_image'd, lossless


def test_url_without_path_gets_v1_and_settings_ride_in_the_query(server):
    url, fake = server
    fake.models = ["a", "b"]
    with pytest.raises(ServerError, match=r"serves 2 models \(a, b\).*\?model=NAME"):
        load_scorer(f"vlm:{url}")
    s = load_scorer(f"unifiedreward:{url}?model=b&top_logprobs=5&concurrency=3")
    assert s.model == "b" and s.server.base == f"{url}/v1" and s.server.concurrency == 3
    with pytest.raises(ServerError, match="serves a, b, not 'c'"):
        load_scorer(f"vlm:{url}/v1?model=c")
    with pytest.raises(ServerError, match=r"unknown setting\(s\) workers.*concurrency="):
        load_scorer(f"vlm:{url}/v1?workers=3")
    with pytest.raises(ServerError, match="timeout=soon is not a float"):
        load_scorer(f"vlm:{url}/v1?timeout=soon")


def test_concurrency_is_limited(server):
    url, fake = server
    fake.delay = 0.1
    s = load_scorer(f"vlm:{url}/v1?concurrency=2")
    s.score(images(6), ["p"] * 6, batch_size=6)
    assert len(fake.bodies) == 6 and fake.max_in_flight == 2


def test_a_500_is_retried_then_succeeds(server):
    url, fake = server
    fake.script = ["500"]
    s = load_scorer(f"vlm:{url}/v1")
    assert s.score(images(1), ["p"]) == pytest.approx([0.75])
    assert len(fake.bodies) == 2


def test_retries_are_bounded(server):
    url, fake = server
    fake.script = ["500"] * 10
    s = load_scorer(f"vlm:{url}/v1?retries=2")
    with pytest.raises(ServerError, match=r"(?s)3 attempt\(s\).*HTTP 500.*fake 500.*Fix"):
        s.score(images(1), ["p"])
    assert len(fake.bodies) == 3


def test_a_client_error_is_not_retried(server):
    url, fake = server
    fake.script = ["400"]
    s = load_scorer(f"vlm:{url}/v1")
    with pytest.raises(ServerError, match=r"refused the request \(HTTP 400.*must accept images"):
        s.score(images(1), ["p"])
    assert len(fake.bodies) == 1


def test_no_logprobs_is_a_clear_error(server):
    url, fake = server
    fake.script = ["nologprobs"]
    s = load_scorer(f"vlm:{url}/v1")
    with pytest.raises(ServerError, match=r"answered without log-probabilities.*--max-logprobs"):
        s.score(images(1), ["p"])
    fake.script = ["noanswer"]
    with pytest.raises(ServerError, match=r"none of the answers \(yes, no\).*'The'.*top_logprobs"):
        s.score(images(1), ["p"])


def test_an_answer_that_is_not_json_is_a_clear_error(server):
    url, fake = server
    fake.script = ["html"]
    s = load_scorer(f"vlm:{url}/v1")
    with pytest.raises(ServerError, match="answered something that is not JSON"):
        s.score(images(1), ["p"])
    assert len(fake.bodies) == 1


def test_a_slow_server_times_out(server):
    url, fake = server
    fake.script = ["slow", "slow"]
    s = load_scorer(f"vlm:{url}/v1?timeout=0.3&retries=1")
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"(?s)2 attempt\(s\).*timed out.*\?timeout= \(now 0.3 s\)"):
        s.score(images(1), ["p"])
    assert time.monotonic() - start < 1.9 and len(fake.bodies) == 2


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_fails_in_preflight_naming_the_fix():
    spec = f"vlm:http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ServerError, match=r"(?s)could not be reached.*Fix: start it, e.g. `vllm serve"):
        check_scorers([spec])  # what every stage's preflight runs before a model loads or an image is made
    with pytest.raises(ServerError, match="could not be reached"):
        load_scorer(spec)


def test_a_server_that_is_not_the_api_fails_in_preflight(server):
    url, _ = server
    with pytest.raises(ServerError, match="did not answer an OpenAI-compatible model list"):
        check_scorers([f"vlm:{url}/api"])


def test_aif_score_runs_on_the_served_judge(server, tmp_path):
    """`aif score --scorer vlm:URL` end to end (DataLoader transform -> data URL -> server -> pairs)."""
    from aifeedback.stages.score import run
    from tests.test_score import cfg, image_scores, make_generate_dir, read_pairs

    url, fake = server
    fake.by_red = True
    rows = make_generate_dir(tmp_path / "gen", n_prompts=2, k=3)
    run(cfg(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=f"vlm:{url}/v1", batch_size=4))
    assert len(fake.bodies) == 1 + 6 and len(read_pairs(tmp_path / "pairs")) == 2  # preflight's test image + 6
    red = [np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"), np.float64)[..., 0].mean() / 255 for r in rows]
    scored = image_scores(tmp_path / "pairs")
    assert len(scored) == 6
    for r in scored:
        assert r["raw"][0] == pytest.approx(0.01 + 0.98 * red[r["row"]], abs=2e-3)


@pytest.mark.parametrize("stage", [["score", "--input", "org/data", "--out", "OUT"], ["demo", "--out", "OUT"]])
def test_the_cli_refuses_a_down_server_before_any_heavy_import_or_image(tmp_path, stage):
    """`aif score` / `aif demo` (which generates images) with a judge whose server is down: exit 2 naming the fix,
    torch never imported, nothing written."""
    import sys

    from tests.launch import run_group
    from tests.test_cli import _RUN_AND_REPORT_IMPORTS

    args = [a.replace("OUT", str(tmp_path / "out")) for a in stage] + ["--scorer",
                                                                       f"vlm:http://127.0.0.1:{free_port()}/v1"]
    result = run_group([sys.executable, "-c", _RUN_AND_REPORT_IMPORTS, *args], timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "could not be reached" in result.stderr and "Fix: start it" in result.stderr, result.stderr
    assert "heavy imports: none" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
