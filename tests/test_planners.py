"""prismaudio.cot planners: registry, the OpenAI-compatible planner against a real local HTTP server
(retries, timeouts, auth, refusals, the JSON repair turn) and a tiny random local VLM end to end."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prismaudio.cot import (
    COT_PROMPT,
    CoT,
    CoTParseError,
    Planner,
    build_planner,
    list_planners,
    register_planner,
)
from prismaudio.cot.planners import (
    REPAIR_REQUEST,
    LocalVLMPlanner,
    OpenAIPlanner,
    key_frames,
)
from prismaudio.errors import PrismAudioError

GOOD = {"semantic": "A ball hits the floor twice.", "temporal": "At 0.52 s and 1.30 s.",
        "aesthetic": "Clean and natural.", "spatial": "On the left, close."}
LABELLED = "\n".join(f"**{k.capitalize()}:** {v}" for k, v in GOOD.items())


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from prismaudio.procedural.synth import make_clip
    from prismaudio.procedural.synth.writer import encode_mp4

    cfg = {"duration": 4.0, "fps": 25, "size": 48, "sample_rate": 16000}
    _row, frames, audio, _ = make_clip(3, 0, cfg)
    path = tmp_path_factory.mktemp("planner") / "clip.mp4"
    encode_mp4(path, frames, audio, cfg["fps"], cfg["sample_rate"])
    return path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "json"
    requests: list[dict]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout test)
            pass

    def _answer(self, text: str) -> None:
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        n, mode = len(srv.requests), srv.mode
        if mode == "json":
            self._answer(json.dumps(GOOD))
        elif mode == "labelled":
            self._answer(f"Here is my analysis of the video.\n\n{LABELLED}")
        elif mode == "repair":
            self._answer("The video shows a ball bouncing on a floor." if n == 1 else f"```json\n{json.dumps(GOOD)}\n```")
        elif mode == "malformed":
            self._answer(f"Semantic: {GOOD['semantic']}")
        elif mode == "slow":
            time.sleep(1.0)
            self._answer(json.dumps(GOOD))
        elif mode == "500":
            if n == 1:
                self._send(500, {"error": {"message": "overloaded"}})
            else:
                self._answer(json.dumps(GOOD))
        elif mode == "401":
            self._send(401, {"error": {"message": "Incorrect API key provided"}})
        elif mode == "400":
            self._send(400, {"error": {"message": "model does not support images"}})
        elif mode == "refusal":
            self._answer("I'm sorry, but I can't help with that.")
        elif mode == "no_choices":
            self._send(200, {"object": "error"})


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _planner(srv: _Server, mode: str, **kw) -> OpenAIPlanner:
    srv.mode = mode
    params = {"base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1", "model": "test-vlm", "api_key": "sk-test",
              "timeout": 5.0, "retries": 2, "n_frames": 4, "frame_size": 32, "backoff": 0.01, **kw}
    planner = build_planner("openai", **params)
    assert isinstance(planner, OpenAIPlanner)
    return planner


# ------------------------------------------------------------------------------ registry


def test_registry():
    assert {"openai", "local"} <= set(list_planners())
    with pytest.raises(PrismAudioError, match="unknown planner 'gemini'.*openai"):
        build_planner("gemini")
    with pytest.raises(PrismAudioError, match="unknown parameter.*temperature"):
        build_planner("openai", base_url="http://x", model="m", temperature=0.3)
    with pytest.raises(PrismAudioError, match="missing required.*model"):
        build_planner("openai", base_url="http://x")
    with pytest.raises(TypeError):
        register_planner("bad")(dict)

    @register_planner("constant-test")
    class Constant(Planner):
        def __init__(self, text: str = "a dog barks"):
            self.text = text

        def plan(self, video_path, caption=None):
            return CoT(self.text, "", "", caption or "")

    assert "constant-test" in list_planners() and Constant.name == "constant-test"
    assert build_planner("constant-test", text="x").plan("v.mp4", "left").to_dict() == {
        "semantic": "x", "temporal": "", "aesthetic": "", "spatial": "left"}
    with pytest.raises(PrismAudioError, match="already registered"):
        register_planner("openai")(Constant)


def test_key_frames_are_evenly_spaced(video):
    images, duration = key_frames(video, 8, 32)
    assert len(images) == 8 and abs(duration - 4.0) < 0.1 and images[0].size == (32, 32)
    with pytest.raises(PrismAudioError, match="not found"):
        key_frames(video.parent / "missing.mp4", 4)


# ------------------------------------------------------------------------------ OpenAI-compatible


def _check_request(req: dict, n_images: int, caption: str | None = None) -> None:
    from PIL import Image

    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "test-vlm"
    content = req["body"]["messages"][0]["content"]
    texts = [p["text"] for p in content if p["type"] == "text"]
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(texts) == 1 and texts[0].startswith(COT_PROMPT) and '"semantic"' in texts[0]
    if caption:
        assert caption in texts[0]
    assert len(urls) == n_images
    for url in urls:
        head, data = url.split(",", 1)
        assert head == "data:image/jpeg;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (32, 32)


def test_good_json_answer(server, video):
    cot = _planner(server, "json").plan(video, caption="A ball bounces on the left.")
    assert cot.to_dict() == GOOD
    assert len(server.requests) == 1
    _check_request(server.requests[0], 4, "A ball bounces on the left.")


def test_good_labelled_answer(server, video):
    assert _planner(server, "labelled", image_format="PNG", n_frames=2).plan(video).to_dict() == GOOD
    urls = [p["image_url"]["url"] for p in server.requests[0]["body"]["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)


def test_malformed_then_repaired(server, video):
    assert _planner(server, "repair").plan(video).to_dict() == GOOD
    assert len(server.requests) == 2
    turn = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in turn] == ["user", "assistant", "user"]
    assert turn[1]["content"] == "The video shows a ball bouncing on a floor."
    assert turn[2]["content"] == REPAIR_REQUEST.format(problem="could not be parsed")


def test_always_malformed_is_a_clear_error(server, video):
    with pytest.raises(CoTParseError, match="without temporal, aesthetic, spatial even after a JSON repair") as info:
        _planner(server, "malformed").plan(video)
    assert info.value.missing == ("temporal", "aesthetic", "spatial")
    assert len(server.requests) == 2  # one repair turn, no more
    assert "was missing temporal, aesthetic, spatial" in server.requests[1]["body"]["messages"][2]["content"]


def test_allow_missing_accepts_a_partial_answer_after_the_repair_turn(server, video):
    cot = _planner(server, "malformed", allow_missing=True).plan(video)
    assert cot.to_dict() == {"semantic": GOOD["semantic"], "temporal": "", "aesthetic": "", "spatial": ""}
    assert len(server.requests) == 2


def test_slow_server_is_retried_then_times_out(server, video):
    t0 = time.perf_counter()
    with pytest.raises(PrismAudioError, match=r"timed out after 0.3 s \(gave up after 2 attempts\)"):
        _planner(server, "slow", timeout=0.3, retries=1).plan(video)
    assert time.perf_counter() - t0 < 3
    deadline = time.time() + 2
    while len(server.requests) < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert len(server.requests) == 2


def test_5xx_is_retried(server, video):
    assert _planner(server, "500").plan(video).to_dict() == GOOD
    assert len(server.requests) == 2


@pytest.mark.parametrize(("mode", "message"), [
    ("401", r"authentication failed \(HTTP 401: Incorrect API key provided\); check api_key or OPENAI_API_KEY"),
    ("400", r"request rejected \(HTTP 400: model does not support images\)"),
    ("refusal", r"refused to describe the video: \"I'm sorry, but I can't help with that.\""),
    ("no_choices", r"reply has no choices\[0\].message.content"),
])
def test_4xx_refusal_and_bad_replies_fail_at_once(server, video, mode, message):
    with pytest.raises(PrismAudioError, match=message):
        _planner(server, mode).plan(video)
    assert len(server.requests) == 1  # no retry: repeating cannot help


def test_api_key_from_environment_and_connection_errors(server, video, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    _planner(server, "json", api_key=None).plan(video)
    assert server.requests[0]["auth"] == "Bearer sk-env"
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    planner = build_planner("openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff=0.01, n_frames=1)
    with pytest.raises(PrismAudioError, match=r"connection failed.*gave up after 2 attempts"):
        planner.plan(video)


# ------------------------------------------------------------------------------ local VLM


def _tiny_llava(out: Path) -> Path:
    """A random 2-layer LLaVA (CLIP vision + Llama text) with a word-level tokenizer, built offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "semantic", "temporal", "aesthetic", "spatial", ":", "{", "}",
             '"', ",", "the", "ball", "left", *(f"w{i}" for i in range(40))]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(r"\w+|[^\w\s]", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_tokens(["<image>"], special_tokens=True)
    template = ("{% for m in messages %}{{ m['role'] }}:{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %} {{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:"
                "{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               chat_template=template, num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_local_vlm_planner_runs_end_to_end(tmp_path, video):
    model_dir = _tiny_llava(tmp_path / "tiny-llava")
    planner = build_planner("local", path=str(model_dir), max_new_tokens=12, n_frames=2, frame_size=32)
    assert isinstance(planner, LocalVLMPlanner)
    images, _duration = key_frames(video, 2, 32)
    answer = planner.generate(images, "semantic : the ball")
    assert isinstance(answer, str) and answer.strip()  # random weights: tokens, not a CoT
    with pytest.raises(CoTParseError, match="could not parse a CoT from the local model"):
        planner.plan(video, caption="a ball on the left")


def test_local_vlm_planner_input_errors(tmp_path):
    with pytest.raises(PrismAudioError, match="not a directory"):
        LocalVLMPlanner(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PrismAudioError, match="no weights"):
        LocalVLMPlanner(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a model")
    with pytest.raises(PrismAudioError, match="cannot load a vision-language model"):
        LocalVLMPlanner(tmp_path).generate([], "prompt")  # loading is lazy: the first use fails
