"""Every shipped config runs as documented (issue 19 item 5).

Each YAML under configs/ must load and validate with its run kind's strict loader, and every path
it points at (model, data.manifest, data.features) must exist or be named in a header line

    #   needs: PATH <- make TARGET   |   needs: PATH <- prismaudio COMMAND ... --out PATH

whose producer is real: a Makefile target whose recipe (or the script it runs) writes that path,
or a `prismaudio` command line that the CLI parses and whose --out is that path. `prismaudio grpo`
on a model that is already post-trained warns (as `make grpo-default` refuses).
"""

from __future__ import annotations

import json
import re
import shlex
import warnings
from pathlib import Path

import pytest

from prismaudio.harness.config import is_preset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
NEEDS = re.compile(r"^#\s*needs:\s*(\S+)\s*<-\s*(.+?)\s*$", re.MULTILINE)


def kind(path: Path) -> str:
    return path.relative_to(REPO / "configs").parts[0]


def load(path: Path):
    """The config through the strict loader of its run kind (its folder: train, grpo or eval)."""
    k = kind(path)
    if k == "train":
        from prismaudio.train import load_train_config

        return load_train_config(path, [])
    if k == "grpo":
        from prismaudio.rl import load_grpo_config

        return load_grpo_config(path, [])
    if k == "eval":
        from prismaudio.metrics.evaluate import load_real_config

        return load_real_config(path)
    raise AssertionError(f"configs/{k}/ is a config folder this test has no loader for: add one")


def make_recipe(target: str) -> str:
    """The recipe of a Makefile target, plus the text of the scripts it runs."""
    text = (REPO / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", text, re.MULTILINE)
    assert m, f"Makefile has no target {target!r}"
    recipe = m.group(1)
    for script in re.findall(r"scripts/\S+\.sh", recipe):
        recipe += (REPO / script).read_text()
    return recipe


def producer_problem(path: str, producer: str) -> str | None:
    """Why `producer` does not produce `path` (None: it does)."""
    from prismaudio.cli import build_parser

    targets = {path, str(Path(path).parent)} if Path(path).name in ("manifest.jsonl", "final") else {path}
    if producer.startswith("make "):
        recipe = make_recipe(producer.split()[1])
        return None if any(t in recipe for t in targets) else f"`{producer}` never writes {path}"
    if producer.startswith("prismaudio "):
        try:
            args = build_parser().parse_args(shlex.split(producer)[1:])
        except SystemExit:
            return f"`{producer}` is not a valid prismaudio command line"
        out = str(Path(getattr(args, "out", "") or ""))
        return None if out in targets else f"`{producer}` writes {out!r}, not {path}"
    return f"producer `{producer}` is neither `make TARGET` nor a `prismaudio` command"


def test_every_shipped_config_is_found() -> None:
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"train/cot_mini.yaml", "train/vae_mini.yaml", "grpo/fast_grpo_mini.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_validates_and_its_paths_exist_or_are_produced(config: Path) -> None:
    cfg = load(config)  # strict: an unknown key, a bad type or a bad value fails here, naming the file
    if kind(config) == "eval":  # real-backend checkpoints are the user's upstream files: documented as
        return  # optional (a missing one is reported once and its columns are n/a), so only validated
    header = config.read_text()
    needs: dict[str, list[str]] = {}
    for path, producer in NEEDS.findall(header):
        main, _, alt = producer.partition(" (or: ")
        needs[path] = [main.split(" (")[0].strip()] + ([alt.rstrip(")").strip()] if alt else [])
    referenced = {"model": None if is_preset(cfg.model) else cfg.model,
                  "data.manifest": cfg.data.manifest or None, "data.features": cfg.data.features}
    for key, value in referenced.items():
        if value is None or Path(value).exists():
            continue
        rel = Path(value).resolve().relative_to(REPO).as_posix() if Path(value).resolve().is_relative_to(REPO) else value
        rel = rel if rel in needs else value
        assert rel in needs, (f"{config.name}: {key} = {value} does not exist and no '#   needs: {value} <- make "
                              "TARGET' header line says what produces it")
        for producer in needs[rel]:
            problem = producer_problem(rel, producer)
            assert problem is None, f"{config.name}: {key} = {value}: {problem}"
    for path in needs:  # no stale needs lines either
        assert path in {str(v) for v in referenced.values() if v} | {
            Path(str(v)).resolve().relative_to(REPO).as_posix() for v in referenced.values()
            if v and Path(str(v)).resolve().is_relative_to(REPO)}, f"{config.name}: needs {path}, which it never uses"


def test_the_cot_config_fine_tunes_the_shipped_model_as_shipped() -> None:
    """`prismaudio train configs/train/cot_mini.yaml` failed on a base model nobody had built."""
    from prismaudio.resources import asset_path

    cfg = load(REPO / "configs" / "train" / "cot_mini.yaml")
    assert Path(cfg.model).resolve() == asset_path("prismaudio-mini").resolve()
    assert "--set model=$FOUNDATION" in (REPO / "scripts" / "train_default.sh").read_text()  # train-default's base


def test_producer_check_catches_a_wrong_producer() -> None:
    assert producer_problem("data/corpus/manifest.jsonl", "make train-default") is None
    assert "never writes" in producer_problem("data/other/manifest.jsonl", "make train-default")
    assert "writes 'x'" in producer_problem("data/y/manifest.jsonl", "prismaudio synth --out x --n 2")
    assert "not a valid" in producer_problem("feats", "prismaudio extract --bogus")


def test_grpo_warns_on_a_model_that_is_already_post_trained(tmp_path: Path) -> None:
    """The warning comes first (before any slow work): here the run then stops on its missing corpus."""
    from prismaudio.errors import PrismAudioError
    from prismaudio.pipeline import PrismAudioPipeline
    from prismaudio.resources import asset_path
    from prismaudio.rl import load_grpo_config
    from prismaudio.rl.trainer import POST_TRAINED, GRPOTrainer, post_training_of

    model = tmp_path / "model"
    PrismAudioPipeline.from_preset("tiny").save_pretrained(model)
    sets = [f"data.manifest={tmp_path / 'none.jsonl'}", f"model={model}"]
    cfg = load_grpo_config(REPO / "configs" / "grpo" / "tiny_smoke.yaml", sets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not post-trained: no warning, just the missing corpus
        with pytest.raises(PrismAudioError, match="none.jsonl"):
            GRPOTrainer(cfg, tmp_path / "a", log=lambda _m: None)
    (model / POST_TRAINED).write_text('{"algorithm": "GRPO (fast)", "iterations": 7}')
    with pytest.warns(UserWarning, match=r"already post-trained \(GRPO \(fast\), 7 iterations\)"):
        with pytest.raises(PrismAudioError, match="none.jsonl"):
            GRPOTrainer(cfg, tmp_path / "b", log=lambda _m: None)
    # the shipped model is marked exactly when its summary says it was post-trained (make grpo-default)
    shipped = asset_path("prismaudio-mini")
    summary = json.loads((shipped / "metrics.json").read_text())
    assert (post_training_of(shipped) is not None) == ("post_training" in summary)


@pytest.mark.slow
def test_grpo_export_is_marked_post_trained_and_says_how_long(corpus: Path, tmp_path: Path) -> None:
    from prismaudio.rl import load_grpo_config
    from prismaudio.rl.trainer import POST_TRAINED, grpo, post_training_of

    sets = [f"data.manifest={corpus / 'manifest.jsonl'}", f"data.cache_dir={corpus / 'cache'}", "iterations=2",
            "checkpoint_every=1000"]
    lines: list[str] = []
    grpo(load_grpo_config(REPO / "configs" / "grpo" / "tiny_smoke.yaml", sets), tmp_path / "run", log=lines.append)
    text = "\n".join(lines)
    assert "preparing the prompts" in text and "iteration 1/2" in text and "for the 1 left" in text
    assert (tmp_path / "run" / "final" / POST_TRAINED).is_file()
    assert post_training_of(tmp_path / "run" / "final")["iterations"] == 2
