"""Sharing: model cards (aif export), dataset cards (aif score), the kohya LoRA format, and --push-to-hub up to the
network boundary (HfApi's create_repo / upload_folder replaced by recorders: no hub is reachable in tests)."""

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from safetensors import safe_open
from safetensors.torch import load_file

from aifeedback.config import build_config
from aifeedback.errors import AifError
from aifeedback.sharing.cards import front_matter
from aifeedback.storage.files import write_json
from tests.pairs_fixtures import pickapic_rows, tiny_train, write_pickapic

REAL_WHOAMI = HfApi.whoami  # the tests that need the hub's real answer without a hub put it back


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from aifeedback.stages.train import run

    root = tmp_path_factory.mktemp("runs")
    data = write_pickapic(root / "data", pickapic_rows(4))
    # alpha != rank: the kohya alphas must carry the scale alpha / rank
    return run(tiny_train(data, root / "lora", model="tiny-sdxl", lora_rank=2, lora_alpha=4.0, max_steps=1,
                          checkpoint_every=1, lr=1e-2, validation_every=1, validation_prompts=["a red cat"],
                          validation_seeds=[0], validation_steps=1))


def _export(**kw):
    from aifeedback.stages.export import ExportConfig, run

    return run(build_config(ExportConfig, kw))


def _fake_eval(folder, tuned):
    """An `aif eval` output as the card reads it: report.json's per-scorer win rates, manifest's --tuned."""
    s = {"win_rate": 0.625, "ci_low": 0.5, "ci_high": 0.75, "mean_base": 0.1, "mean_tuned": 0.2, "wins": 5,
         "ties": 0, "losses": 3, "n": 8}
    folder.mkdir()
    write_json(folder / "report.json", {"n_prompts": 8, "scorers": {"pickscore": s}})
    write_json(folder / "manifest.json", {"stage": "eval", "config": {"tuned": str(tuned)}})
    return folder


def test_lora_export_has_a_model_card_with_training_facts_eval_and_grid(lora_run, tmp_path):
    evals = _fake_eval(tmp_path / "eval", lora_run)
    out = _export(checkpoint=str(lora_run), out=str(tmp_path / "exp"), eval=str(evals))
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "tiny-sdxl" and meta["library_name"] == "diffusers"
    assert {"text-to-image", "diffusers", "dpo", "lora"} <= set(meta["tags"])
    assert meta["license"] == "other" and "base" in meta["license_name"]
    assert "datasets" not in meta and "license_link" not in meta  # a local folder and a tiny model: no hub ids
    assert str(lora_run.parent / "data") in text and meta["widget"] == [{"text": "a red cat",
                                                                        "output": {"url": "sample_grid.png"}}]
    run_cfg = yaml.safe_load((lora_run / "config.yaml").read_text())
    assert meta["training"] == {"loss": "dpo", "beta": run_cfg["beta"], "lr": 1e-2, "steps": 1,
                                "pairs_seen": 2, "lora_rank": 2}  # 1 step x batch 2 x 1 process
    assert meta["eval_win_rates"] == {"pickscore": 0.625}
    assert (out / "sample_grid.png").read_bytes() == (lora_run / "validation/step-000001.png").read_bytes()
    assert "![validation grid](sample_grid.png)" in text and "load_lora_weights" in text
    assert "62.5%" in text and "license of the base model" in text


def test_full_card_without_eval_or_grid(tmp_path):
    from aifeedback.sharing.cards import write_model_card

    ckpt = tmp_path / "run/checkpoints/checkpoint-000010"
    ckpt.mkdir(parents=True)
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump(dict(model="m/base", dataset="d/pairs", loss="ipo",
                                                                  beta=2000.0, lr=1e-8, batch_size=4, grad_accum=2)))
    write_json(ckpt / "trainer_state.json", {"step": 10, "processes": 2})
    meta = front_matter(write_model_card(tmp_path, ckpt, "full", "diffusers").read_text())
    assert "lora" not in meta["tags"] and "widget" not in meta and "eval_win_rates" not in meta
    assert meta["datasets"] == ["d/pairs"] and meta["license_link"] == "https://huggingface.co/m/base"
    assert meta["training"]["pairs_seen"] == 10 * 4 * 2 * 2 and meta["training"]["loss"] == "ipo"
    piped = write_model_card(tmp_path, ckpt, "lora", "pipeline").read_text()  # LoRA fused into a pipeline folder
    assert "lora" not in front_matter(piped)["tags"]
    assert 'DiffusionPipeline.from_pretrained("REPO_OR_FOLDER")' in piped and "load_lora_weights" not in piped
    with pytest.raises(AifError, match="report.json"):
        write_model_card(tmp_path, ckpt, "full", "diffusers", eval_dir=str(tmp_path / "nowhere"))


def test_kohya_export_round_trips_exactly_and_loads_like_the_diffusers_file(lora_run, tmp_path):
    from aifeedback.families.loading import load_pipeline
    from aifeedback.sharing.kohya import from_kohya, to_peft

    ours = _export(checkpoint=str(lora_run), out=str(tmp_path / "d")) / "pytorch_lora_weights.safetensors"
    kohya_path = _export(checkpoint=str(lora_run), out=str(tmp_path / "k"), format="kohya") / ours.name
    kohya, original = load_file(str(kohya_path)), load_file(str(ours))
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {4.0}
    back, alphas = from_kohya(kohya)
    expected = to_peft(original)  # both sides in peft keys, renamed by diffusers' converters
    assert back.keys() == expected.keys() and all(torch.equal(back[k], v) for k, v in expected.items())
    assert set(alphas.values()) == {4.0} and len(alphas) == len(original) // 2
    with safe_open(str(kohya_path), "pt") as f:
        assert not f.metadata()  # no diffusers adapter config that would not match the kohya keys
    assert front_matter((kohya_path.parent / "README.md").read_text())["tags"][-1] == "lora"

    pipe = load_pipeline("tiny-sdxl")  # diffusers reads the kohya file to the same model (scale 4/2 included)
    kw = dict(height=16, width=16, num_inference_steps=2, output_type="np")
    images = []
    for weights in (ours.parent, kohya_path.parent):
        pipe.load_lora_weights(str(weights))
        images.append(pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).images)
        pipe.unload_lora_weights()
    assert abs(images[0] - images[1]).max() < 1e-5  # same weights, same sampler; float sums in another order


def test_kohya_needs_a_lora(tmp_path):
    from aifeedback.config import ConfigError

    with pytest.raises(ConfigError, match="kohya"):
        _export(checkpoint=str(tmp_path), out=str(tmp_path / "x"), format="kohya", pipeline=True)


@pytest.fixture
def logged_in(monkeypatch):
    """A hub token on the machine and whoami's answer for it (its account "me", member of "lab", write access)."""
    import huggingface_hub
    from huggingface_hub import HfApi

    answer = {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None, **kw: answer)
    return answer


@pytest.fixture
def hub_calls(monkeypatch, logged_in):
    """HfApi.create_repo / upload_folder record what they would send (and the files the folder holds then)."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
        calls.append(dict(call="create_repo", repo_id=repo_id, repo_type=repo_type, private=private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, ignore_patterns=None, **kw):
        from pathlib import Path

        from huggingface_hub.utils import filter_repo_objects

        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(dict(call="upload_folder", repo_id=repo_id, repo_type=repo_type,
                          files=list(filter_repo_objects(files, ignore_patterns=ignore_patterns))))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_export_push_to_hub_sends_the_complete_folder_privately(lora_run, tmp_path, hub_calls):
    _export(checkpoint=str(lora_run), out=str(tmp_path / "e"), push_to_hub="me/dpo-lora")
    assert hub_calls[0] == dict(call="create_repo", repo_id="me/dpo-lora", repo_type="model", private=True)
    assert hub_calls[1] == dict(call="upload_folder", repo_id="me/dpo-lora", repo_type="model",
                                files=["README.md", "pytorch_lora_weights.safetensors", "sample_grid.png"])
    _export(checkpoint=str(lora_run), out=str(tmp_path / "e"), push_to_hub="me/dpo-lora", hub_public=True,
            overwrite=True)
    assert hub_calls[2]["private"] is False


def test_score_writes_a_dataset_card_and_pushes_a_dataset(tmp_path, hub_calls):
    import datasets

    from aifeedback.stages.score import ScoreConfig, run
    from tests.test_score import make_generate_dir

    make_generate_dir(tmp_path / "gen")
    (tmp_path / "gen/.junk.tmp").write_text("a publish in progress")  # never uploaded
    out = tmp_path / "pairs"
    cfg = dict(input=str(tmp_path / "gen"), out=str(out), scorer=["pickscore:tiny"], workers=0, progress=False)
    summary = run(build_config(ScoreConfig, cfg))
    (out / ".x.tmp").write_text("a temporary")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    assert "text-to-image" in meta["task_categories"] and "preference" in meta["tags"]
    assert f"jpg_0 wins {summary['labels']['0']}, jpg_1 wins {summary['labels']['1']}" in text
    assert "pickscore:tiny" in text and "best-worst" in text and 'load_dataset("parquet"' in text
    assert datasets.load_dataset("parquet", data_dir=str(out), split="train").num_rows == summary["counts"]["pairs"]
    assert hub_calls == []  # no --push-to-hub, no upload

    run(build_config(ScoreConfig, dict(cfg, push_to_hub="me/pairs")))  # a finished job: only the upload
    assert hub_calls[0] == dict(call="create_repo", repo_id="me/pairs", repo_type="dataset", private=True)
    files = hub_calls[1]["files"]
    assert "README.md" in files and "summary.json" in files and ".x.tmp" not in files
    assert any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)


def test_a_refused_upload_says_how_to_log_in(tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from aifeedback.sharing.hub import push_folder

    def refuse(self, *a, **kw):  # the hub's answer without a server: its HTTP response type differs by version
        error = HfHubHTTPError.__new__(HfHubHTTPError)
        Exception.__init__(error, "401 Client Error: Unauthorized")
        raise error

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(AifError, match="hf auth login"):
        push_folder(tmp_path, "me/x", "model")
    with pytest.raises(ValueError, match="model or dataset"):
        push_folder(tmp_path, "me/x", "space")


@pytest.mark.parametrize("repo", ["me/bad--name", "datasets/me/pairs", "me/", "me/x" + "y" * 100])
def test_a_bad_repo_id_is_refused_with_the_other_problems(repo):
    from aifeedback.config import ConfigError
    from aifeedback.stages.export_config import ExportConfig
    from aifeedback.stages.score_config import ScoreConfig

    for config, values in ((ExportConfig, {"checkpoint": "run", "format": "kohya", "pipeline": True}),
                           (ScoreConfig, {"input": "gen", "scorer": []})):
        with pytest.raises(ConfigError) as e:  # at parse time, listed with the other problems
            build_config(config, dict(values, push_to_hub=repo))
        assert "push_to_hub: " in str(e.value) and "not a hub repo id" in str(e.value)
        assert "kohya" in str(e.value) if config is ExportConfig else "scorer:" in str(e.value)
    build_config(ExportConfig, {"checkpoint": "run", "push_to_hub": "me/my-dpo_lora.v1"})  # user/name passes
    build_config(ExportConfig, {"checkpoint": "run", "push_to_hub": "my-lora"})  # in the login's namespace


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port nothing listens on: connecting is refused at once, no network needed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused(self, *a, **kw):
    from huggingface_hub.errors import HfHubHTTPError

    error = HfHubHTTPError.__new__(HfHubHTTPError)  # the hub's 401 without a server (see test below)
    Exception.__init__(error, "401 Client Error: Unauthorized\nInvalid credentials in Authorization header")
    raise error


@pytest.mark.parametrize("case, match", [
    ("no token", "no hub token on this machine; log in with `hf auth login`"),
    ("offline", "could not reach the hub .*offline mode is enabled"),
    ("no network", "could not reach the hub .*(refused|Connection)"),
    ("token refused", "the hub did not accept the login check .*401 Client Error.*hf auth login"),
    ("read-only token", "the token of me is read-only"),
    ("foreign namespace", "the logged-in account me cannot write to 'other' .*pass me/lora"),
])
def test_push_to_hub_checks_login_and_network_before_the_export(lora_run, tmp_path, monkeypatch, logged_in, case,
                                                                match):
    import huggingface_hub
    from huggingface_hub import constants

    repo = "other/lora" if case == "foreign namespace" else "me/lora"
    if case == "no token":
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    if case in ("offline", "no network"):  # the real whoami, against no hub
        monkeypatch.setattr(HfApi, "whoami", REAL_WHOAMI)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", case == "offline")
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    if case == "token refused":
        monkeypatch.setattr(HfApi, "whoami", _refused)
    if case == "read-only token":
        logged_in["auth"]["accessToken"]["role"] = "read"
    for method in ("create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, method, lambda *a, **kw: pytest.fail("uploaded after a failed check"))
    out = tmp_path / "e"
    with pytest.raises(AifError, match=match) as e:
        _export(checkpoint=str(lora_run), out=str(out), push_to_hub=repo)
    assert "\n" not in str(e.value) and not out.exists()  # one line, and nothing exported yet


def test_score_checks_the_hub_login_before_scoring(tmp_path, monkeypatch):
    import huggingface_hub

    from aifeedback.stages.score import ScoreConfig, run
    from tests.test_score import make_generate_dir

    make_generate_dir(tmp_path / "gen")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    cfg = dict(input=str(tmp_path / "gen"), out=str(tmp_path / "pairs"), scorer=["pickscore:tiny"], workers=0,
               progress=False, push_to_hub="me/pairs")
    with pytest.raises(AifError, match="no hub token"):
        run(build_config(ScoreConfig, cfg))
    assert not (tmp_path / "pairs").exists()


def test_a_failed_upload_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    from aifeedback.sharing.hub import push_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")  # the network fails mid-way
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub/{repo_id}")
    with pytest.raises(AifError, match="the upload failed .*complete; log in") as e:
        push_folder(tmp_path, "me/x", "model")
    assert "\n" not in str(e.value)
