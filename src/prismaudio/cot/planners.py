"""CoT planners: video (+ optional caption) -> four-module CoT (PrismAudio §3.2, Appendix D.2).

The paper's planner is VideoLLaMA2 fine-tuned on Gemini-2.5-Pro CoTs. Here a planner is anything
registered under a name: `openai` (any OpenAI-compatible chat-completions endpoint with image input:
vLLM, llama.cpp server, Ollama, a hosted API) and `local` (a transformers vision-language model from
a local directory). Other modules add planners with `@register_planner("name")`. Planners that ship
with the package but live outside `cot` (the procedural world's "offline") are listed by module name
in `BUILTIN_PLUGINS` and imported only when asked for, so `cot` imports none of them.

Both send the paper's CoT-generation prompt with evenly spaced key frames (the transformers and
HTTP chat formats take images, not video) and ask for a JSON answer, then parse it with `CoT.parse`.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import PrismAudioError
from .core import MODULES, CoT, CoTParseError

# Appendix D.2, the prompt for Gemini 2.5 Pro (AudioCanvas and VideoLLaMA2 training data), verbatim.
COT_PROMPT = (
    "You are an expert in video-to-audio generation. Given a video with audio, analyze the audio content that "
    "should be generated and provide a comprehensive Chain-of-Thought description covering four dimensions: "
    "**Semantic Dimension:** Identify all audio events, objects, and actions visible in the video. Describe what "
    "sounds should be generated, including their characteristics (e.g., type, intensity, material properties). "
    "**Temporal Dimension:** Determine the sequential ordering and timing of audio events. Describe when each "
    "sound should occur relative to visual cues and other audio events, including onset, duration, and temporal "
    "relationships. "
    "**Aesthetic Dimension:** Assess the audio quality aspects that should be achieved. Describe the naturalness, "
    "fidelity, richness, and perceptual quality of the sounds, considering the context and environment depicted "
    "in the video. "
    "**Spatial Dimension:** Analyze the spatial positioning of sound sources. Describe the directional "
    "placement, left-right channel distribution, distance, and movement patterns of sounds relative to the "
    "visual content. "
    "Provide your analysis in a structured format that clearly separates these four dimensions."
)

# Our additions (not in the paper): the frames stand in for the video, and a parseable format.
FRAMES_NOTE = "The video is given as {n} key frames, evenly spaced over its {duration:.2f} seconds, in order."
JSON_REQUEST = (
    'Answer with only a JSON object with exactly the string keys "semantic", "temporal", "aesthetic" and '
    '"spatial", one per dimension.'
)
REPAIR_REQUEST = (
    'Please answer again in JSON with keys "semantic", "temporal", "aesthetic" and "spatial" (each a '
    "non-empty string); your previous answer {problem}. Answer with only the JSON object."
)

_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|unfortunately|as an ai)|"
    r"\bi (?:can(?:'|no)t|cannot|am unable to|'m unable to|won'?t|am not able to) "
    r"(?:help|assist|comply|provide|do that|fulfil|analy[sz]e|describe|process|view|see)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """Whether an (unparseable) answer looks like a refusal rather than a malformed CoT."""
    return bool(_REFUSAL.search(text[:500]))


def build_prompt(caption: str | None, n_frames: int, duration: float) -> str:
    """The paper's prompt, the frames note, the caption when given, and the JSON request."""
    parts = [COT_PROMPT, FRAMES_NOTE.format(n=n_frames, duration=duration)]
    if caption and caption.strip():
        parts.append(f"The video's caption: {' '.join(caption.split())}")
    parts.append(JSON_REQUEST)
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------ registry


class Planner(ABC):
    """Video -> CoT. Subclasses implement `plan`; register them with `@register_planner(name)`."""

    name: str = ""

    @abstractmethod
    def plan(self, video_path: str | os.PathLike, caption: str | None = None) -> CoT:
        """The four-module CoT for the video at `video_path`, optionally guided by its caption."""


P = TypeVar("P", bound=type[Planner])
_REGISTRY: dict[str, type[Planner]] = {}

# name -> module that registers that planner when imported. A string, imported with importlib on
# first use: the procedural world plugs in here without the core depending on it.
BUILTIN_PLUGINS: dict[str, str] = {"offline": "prismaudio.procedural.planner"}


def _plugin_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is absent
        return False


def _load_plugin(name: str) -> None:
    """Import the built-in plugin module of planner `name`, if it has one and it is not loaded yet."""
    module = BUILTIN_PLUGINS.get(name)
    if module is None or name in _REGISTRY:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):  # the plugin itself is absent
            raise PrismAudioError(f"planner {name!r} is not available: module {module} is not installed") from None
        raise
    if name not in _REGISTRY:
        raise PrismAudioError(f"module {module} did not register the planner {name!r}")


def register_planner(name: str) -> Callable[[P], P]:
    """Class decorator: make a Planner subclass buildable as `build_planner(name, **params)`."""

    def deco(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Planner)):
            raise TypeError(f"@register_planner({name!r}) must decorate a Planner subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PrismAudioError(f"planner {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_planners() -> list[str]:
    """Registered planner names and the installed built-in plugins (not imported), sorted."""
    return sorted(set(_REGISTRY) | {n for n, m in BUILTIN_PLUGINS.items() if _plugin_available(m)})


def get_planner(name: str) -> type[Planner]:
    """The Planner class registered as `name`, importing its built-in plugin module first if needed."""
    _load_plugin(name)
    if name not in _REGISTRY:
        raise PrismAudioError(f"unknown planner {name!r}; available: {', '.join(list_planners()) or 'none'}")
    return _REGISTRY[name]


def build_planner(name: str, **params: Any) -> Planner:
    """The planner registered as `name`, constructed with `params` (unknown ones: PrismAudioError)."""
    cls = get_planner(name)
    sig = inspect.signature(cls.__init__)
    accepted = [p for p in list(sig.parameters)[1:] if sig.parameters[p].kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise PrismAudioError(f"planner {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                                  f"accepted: {', '.join(accepted)}")
    required = [p for p in accepted if sig.parameters[p].default is inspect.Parameter.empty and p not in params]
    if required:
        raise PrismAudioError(f"planner {name!r}: missing required parameter(s) {', '.join(required)}")
    return cls(**params)


# ------------------------------------------------------------------------------ frames


def key_frames(video_path: str | os.PathLike, n: int, size: int = 336) -> tuple[list[Any], float]:
    """(n PIL images evenly spaced at t = k*duration/n, video duration); centre-cropped squares."""
    from PIL import Image

    from ..io.video import probe_video, read_frames

    if n < 1:
        raise PrismAudioError(f"n_frames must be at least 1, got {n}")
    path = Path(video_path)
    if not path.is_file():
        raise PrismAudioError(f"video not found: {path}")
    duration = float(probe_video(path).duration)
    if not duration > 0:
        raise PrismAudioError(f"video has no duration: {path}")
    frames = read_frames(path, fps=n / duration * (1 + 1e-9), size=size, duration=duration)[:n]
    arr = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr], duration


def data_url(image: Any, fmt: str = "JPEG") -> str:
    """A PIL image as a base64 `data:` URL (JPEG quality 90 or PNG)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# ------------------------------------------------------------------------------ HTTP client


class ChatClient:
    """Minimal OpenAI-compatible chat-completions client on the stdlib (httpx is not a dependency).

    Retries (exponential backoff `backoff * 2**attempt`) on timeouts, connection errors, HTTP 429
    and 5xx, since those are transient; any other 4xx fails at once, since repeating the same request
    cannot fix it.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 1.0, temperature: float = 0.0):
        if not base_url or not isinstance(base_url, str):
            raise PrismAudioError("chat client needs base_url, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise PrismAudioError("chat client needs a model name")
        if not timeout > 0:
            raise PrismAudioError(f"timeout must be positive seconds, got {timeout}")
        if int(retries) < 0:
            raise PrismAudioError(f"retries must be >= 0, got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.backoff, self.temperature = float(timeout), int(retries), float(backoff), temperature

    def _post_once(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise PrismAudioError(f"{self.url} did not answer with JSON: {raw[:200]!r}") from None

    @staticmethod
    def _server_message(e: urllib.error.HTTPError) -> str:
        try:
            raw = e.read().decode("utf-8", "replace")
        except OSError:
            return ""
        try:
            err = json.loads(raw).get("error", raw)
            return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
        except (ValueError, AttributeError):
            return raw[:300]

    def chat(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's text for `messages`; PrismAudioError on HTTP failure or a malformed reply."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._post_once(body)
                break
            except urllib.error.HTTPError as e:
                msg = self._server_message(e)
                if e.code in (401, 403):
                    raise PrismAudioError(f"{self.url}: authentication failed (HTTP {e.code}: {msg}); check api_key "
                                          "or OPENAI_API_KEY") from None
                if e.code != 429 and e.code < 500:
                    raise PrismAudioError(f"{self.url}: request rejected (HTTP {e.code}: {msg})") from None
                last = f"HTTP {e.code}: {msg}"
            except TimeoutError:
                last = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"connection failed ({e.reason})"
            except (OSError, http.client.HTTPException) as e:
                last = f"connection failed ({e})"
        else:
            raise PrismAudioError(f"{self.url}: {last} (gave up after {self.retries + 1} attempts)")
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise PrismAudioError(f"{self.url}: reply has no choices[0].message.content: {str(reply)[:200]}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise PrismAudioError(f"{self.url}: reply content is not text: {type(content).__name__}")
        return content


# ------------------------------------------------------------------------------ planners


def _parse_with_repair(answer: str, ask_again: Callable[[str], str] | None, source: str,
                       allow_missing: bool = False) -> CoT:
    """Parse `answer`; on a missing module ask once more (if `ask_again`), then fail clearly, or with
    `allow_missing` accept a partial CoT (absent modules "")."""
    for turn in range(2):
        try:
            return CoT.parse(answer)
        except CoTParseError as e:
            if is_refusal(answer) and not e.partial:
                raise PrismAudioError(f"{source} refused to describe the video: {' '.join(answer.split())[:200]!r}") from None
            problem = (f"was missing {', '.join(e.missing)}" if e.partial else "could not be parsed")
            if turn == 1 or ask_again is None:
                if allow_missing and e.partial:
                    return CoT.parse(answer, allow_missing=True)
                what = (f"a CoT without {', '.join(e.missing)}" if e.partial else "no parseable CoT")
                raise CoTParseError(f"could not parse a CoT from {source}: it gave {what}"
                                    f"{' even after a JSON repair request' if turn else ''}; answer starts: "
                                    f"{' '.join(answer.split())[:160]!r}", e.missing, e.partial) from None
            answer = ask_again(REPAIR_REQUEST.format(problem=problem))
    raise AssertionError("unreachable")


@register_planner("openai")
class OpenAIPlanner(Planner):
    """CoT from an OpenAI-compatible multimodal chat endpoint: key frames as data-URL images + prompt.

    One repair turn: if the answer lacks modules, the conversation continues with a request for the
    JSON format; a second failure or a refusal raises a PrismAudioError (with `allow_missing=True` a
    second answer that has some modules is accepted, the others "").
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, n_frames: int = 8, frame_size: int = 336, image_format: str = "JPEG",
                 backoff: float = 1.0, allow_missing: bool = False):
        if image_format.upper() not in ("JPEG", "PNG"):
            raise PrismAudioError(f"image_format must be JPEG or PNG, got {image_format!r}")
        if int(n_frames) < 1:
            raise PrismAudioError(f"n_frames must be at least 1, got {n_frames}")
        self.client = ChatClient(base_url, model, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff)
        self.n_frames, self.frame_size, self.image_format = int(n_frames), int(frame_size), image_format.upper()
        self.allow_missing = bool(allow_missing)

    def plan(self, video_path: str | os.PathLike, caption: str | None = None) -> CoT:
        images, duration = key_frames(video_path, self.n_frames, self.frame_size)
        content: list[dict[str, Any]] = [{"type": "text", "text": build_prompt(caption, len(images), duration)}]
        content += [{"type": "image_url", "image_url": {"url": data_url(im, self.image_format)}} for im in images]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        answer = self.client.chat(messages)

        def ask_again(request: str) -> str:
            messages.extend([{"role": "assistant", "content": answer}, {"role": "user", "content": request}])
            return self.client.chat(messages)

        return _parse_with_repair(answer, ask_again, f"the planner model {self.client.model!r}", self.allow_missing)


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@register_planner("local")
class LocalVLMPlanner(Planner):
    """CoT from a transformers vision-language model in a local directory (never downloaded).

    Loads `AutoProcessor` + `AutoModelForImageTextToText` (Qwen2/2.5-VL, LLaVA, SmolVLM, ...) lazily
    on the first `plan`, builds the chat with the processor's chat template (key frames as images,
    then the prompt), decodes greedily and parses. No repair turn: a local model that ignores the
    format once usually does again; the error names what was missing.
    """

    def __init__(self, path: str | os.PathLike, max_new_tokens: int = 256, device: str = "cpu", n_frames: int = 4,
                 frame_size: int = 336, dtype: str = "float32", allow_missing: bool = False):
        d = Path(path).expanduser() if path else None
        if d is None or not d.is_dir():
            raise PrismAudioError(f"planner 'local': {path!r} is not a directory; expected a local vision-language "
                                  "model (config.json, weights, processor and tokenizer files)")
        if not (d / "config.json").is_file():
            raise PrismAudioError(f"planner 'local': no config.json in {d}")
        if not any((d / w).is_file() for w in _WEIGHTS) and not any(d.glob("*.safetensors")):
            raise PrismAudioError(f"planner 'local': no weights (model.safetensors / pytorch_model.bin) in {d}")
        if int(max_new_tokens) < 1 or int(n_frames) < 1:
            raise PrismAudioError("planner 'local': max_new_tokens and n_frames must be at least 1")
        self.path, self.max_new_tokens, self.device = d, int(max_new_tokens), device
        self.n_frames, self.frame_size, self.dtype = int(n_frames), int(frame_size), dtype
        self.allow_missing = bool(allow_missing)
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            from ..encoders.t5 import quiet_hf, resolve_dtype

            dtype = resolve_dtype(self.dtype, "planner local")
            try:
                with quiet_hf():
                    processor = AutoProcessor.from_pretrained(str(self.path), local_files_only=True)
                    model = AutoModelForImageTextToText.from_pretrained(str(self.path), local_files_only=True, dtype=dtype)
            except (OSError, ValueError, KeyError) as e:
                raise PrismAudioError(f"planner 'local': cannot load a vision-language model from {self.path}: {e}") from None
            try:
                model.to(torch.device(self.device))
            except (RuntimeError, AssertionError) as e:
                raise PrismAudioError(f"planner 'local': cannot use device {self.device!r}: {e}") from None
            self._loaded = (processor, model.eval())
        return self._loaded

    def generate(self, images: list[Any], prompt: str) -> str:
        """Greedy decoding of the model's answer to `prompt` with `images` (the new tokens only)."""
        import torch

        processor, model = self._load()
        messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": prompt}]}]
        try:
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            batch = processor(text=text, images=images, return_tensors="pt")
        except (ValueError, TypeError, KeyError) as e:
            raise PrismAudioError(f"planner 'local': the processor in {self.path} cannot build the prompt: {e}") from None
        batch = batch.to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def plan(self, video_path: str | os.PathLike, caption: str | None = None) -> CoT:
        images, duration = key_frames(video_path, self.n_frames, self.frame_size)
        answer = self.generate(images, build_prompt(caption, len(images), duration))
        return _parse_with_repair(answer, None, f"the local model in {self.path}", self.allow_missing)


__all__ = [
    "BUILTIN_PLUGINS",
    "COT_PROMPT",
    "MODULES",
    "ChatClient",
    "LocalVLMPlanner",
    "OpenAIPlanner",
    "Planner",
    "build_planner",
    "build_prompt",
    "data_url",
    "get_planner",
    "is_refusal",
    "key_frames",
    "list_planners",
    "register_planner",
]
