"""Tokenizer switches and pooling as the checkpoint states them, checked against transformers' tokenizer and
sentence-transformers on the same folders (tiny random weights; the real weights: test_real_weights.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simcli.errors import ModelError, UsageError
from simcli.models.encoder import load_encoder
from simcli.models.loading import open_checkpoint
from simcli.models.tokenizers import CharTokenizer
from tests import checkpoints
from tests.invoke import simcli
from tests.layouts import m3e_layout, st_layout

TRICKY = [
    "有没有哪个网站能免费阅读VIP小说",
    "怎么设置超级QQ全天在线（移动手机开通的）",
    "iPhone 12 和 Ａ版 ＱＱ 的区别",
    "Café CAFÉ café É",
    "ABC abc Q##Q 123 4.5",
    "花呗如何还款",
    "",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoints.build_simbert(tmp_path_factory.mktemp("bert") / "bert", with_pooler=False)


def _hf_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(t, truncation=True, max_length=64)["input_ids"] for t in texts]


@pytest.mark.parametrize(
    "tokenizer_config",
    [
        {"do_lower_case": False},
        {"do_lower_case": True},
        {"do_lower_case": True, "strip_accents": False},
        {"do_lower_case": False, "strip_accents": True},
        {"do_lower_case": False, "tokenize_chinese_chars": False},
    ],
)
def test_tokenizer_switches_match_transformers(
    bert_dir: Path, tmp_path: Path, tokenizer_config: dict
) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", tokenizer_config)
    enc = load_encoder(str(folder), dtype="float32")
    ours = enc.tokenizer.encode_batch(TRICKY, 64).ids
    assert ours == _hf_ids(folder, TRICKY)
    # and each switch matters on these sentences: only the default settings give the default ids
    default_ids = CharTokenizer(folder / "tokenizer.json").encode_batch(TRICKY, 64).ids
    assert (ours == default_ids) == (tokenizer_config == {"do_lower_case": True})


def test_lower_casing_is_kept_from_the_config_not_guessed(bert_dir: Path, tmp_path: Path) -> None:
    cased = load_encoder(str(m3e_layout(bert_dir, tmp_path / "c", {"do_lower_case": False})), dtype="float32")
    assert cased.tokenizer.tokenize("VIP小说") == ["VIP", "小", "说"]
    info = cased.info()
    assert (info["lowercase"], info["sources"]["lowercase"]) == (False, "tokenizer config")
    # tokenizer.json only: its BertNormalizer decides (it says lowercase false)
    bare = load_encoder(str(m3e_layout(bert_dir, tmp_path / "b", None)), dtype="float32")
    assert bare.tokenizer.tokenize("VIP") == ["VIP"]
    assert bare.info()["sources"]["lowercase"] == "tokenizer.json"


def test_published_checkpoints_without_tokenizer_config_stay_lower_cased(roformer_sim_dir: Path) -> None:
    enc = load_encoder(str(roformer_sim_dir), dtype="float32")
    assert enc.tokenizer.tokenize("iPhone OK") == ["iphone", "ok"]
    info = enc.info()
    assert info["lowercase"] is True
    assert info["sources"]["lowercase"] == info["sources"]["pooling"].split(" for ")[0] == "simcli default"
    assert info["sources"]["pooling"] == "simcli default for roformer-sim"


def test_model_max_length_caps_max_length(bert_dir: Path, tmp_path: Path) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", {"do_lower_case": False, "model_max_length": 32})
    assert load_encoder(str(folder), max_length=32, dtype="float32").max_length == 32
    with pytest.raises(UsageError) as e:
        load_encoder(str(folder), max_length=33)
    assert (
        str(e.value)
        == "--max-length must be between 3 and 32 (model_max_length of its tokenizer config), got 33"
    )


def test_tokenizer_json_must_be_wordpiece(bert_dir: Path, tmp_path: Path) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", {"do_lower_case": False})
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["type"] = "BPE"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(
        ModelError, match=r"tokenizer.json: holds a BPE tokenizer model; simcli loads WordPiece"
    ):
        open_checkpoint(str(folder))


def test_no_vocab_at_all(bert_dir: Path, tmp_path: Path) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", {"do_lower_case": False})
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"vocab.txt \(or a WordPiece tokenizer.json\) missing in"):
        open_checkpoint(str(folder))


ST_MODES = ["mean", "cls", "max", "weightedmean", "lasttoken", "mean_sqrt_len_tokens"]
SIMCLI_NAMES = {
    "mean": "last-avg",
    "cls": "cls",
    "max": "max",
    "weightedmean": "weighted-mean",
    "lasttoken": "last-token",
    "mean_sqrt_len_tokens": "mean-sqrt-len",
}
SENTENCES = [s for s in TRICKY if s] + ["我不喜欢北京", "我很喜欢北京", "今天天气怎么样" * 12]


@pytest.mark.parametrize(("mode", "normalize"), [*((m, False) for m in ST_MODES), ("mean", True)])
def test_pooling_from_sentence_transformers_modules_matches_it(
    bert_dir: Path, tmp_path: Path, mode: str, normalize: bool
) -> None:
    from sentence_transformers import SentenceTransformer

    flags = {
        f"pooling_mode_{k}": False for k in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    }
    key = {
        "mean": "mean_tokens",
        "cls": "cls_token",
        "max": "max_tokens",
        "weightedmean": "weightedmean_tokens",
        "lasttoken": "lasttoken",
        "mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    }[mode]
    folder = st_layout(bert_dir, tmp_path / "st", {**flags, f"pooling_mode_{key}": True}, normalize=normalize)
    enc = load_encoder(str(folder), dtype="float32")
    assert enc.pooling == SIMCLI_NAMES[mode]
    ours = enc.encode(SENTENCES)  # raw: normalised only where the model ends in a Normalize module
    st = SentenceTransformer(str(folder), device="cpu")
    st.max_seq_length = 64
    theirs = st.encode(SENTENCES, batch_size=4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize
    info = enc.info()
    assert info["sources"]["pooling"] == "sentence-transformers modules"
    assert (info["normalize"], info["sources"]["normalize"]) == (
        normalize,
        "sentence-transformers modules" if normalize else "simcli default",
    )


def test_new_style_pooling_mode_key(bert_dir: Path, tmp_path: Path) -> None:
    folder = st_layout(bert_dir, tmp_path / "st", {"pooling_mode": "lasttoken", "include_prompt": False})
    ck = open_checkpoint(str(folder))
    assert ck.pooling_statement is not None
    assert (ck.pooling_statement.mode, ck.pooling_statement.include_prompt) == ("last-token", False)


def test_explicit_pooling_overrides_the_stated_one(bert_dir: Path, tmp_path: Path) -> None:
    folder = st_layout(bert_dir, tmp_path / "st", {"pooling_mode_mean_tokens": True})
    enc = load_encoder(str(folder), pooling="cls", dtype="float32")
    assert enc.pooling == "cls" and enc.info()["sources"]["pooling"] == "--pooling"


@pytest.mark.parametrize(
    ("pooling", "extra", "message"),
    [
        (
            {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
            None,
            r"1_Pooling/config.json: pooling cls\+mean is not supported .*a concatenation of several",
        ),
        ({"pooling_mode": "median"}, None, r"pooling median is not supported \(simcli runs one of cls, mean"),
        ({}, None, r"pooling none is not supported"),
        (
            {"pooling_mode_mean_tokens": True},
            [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
            r"modules.json: module 'Dense' is not supported \(simcli runs Transformer, Pooling, Normalize\)",
        ),
    ],
)
def test_unsupported_stated_pooling_is_a_clear_error(
    bert_dir: Path, tmp_path: Path, pooling: dict, extra: list | None, message: str
) -> None:
    folder = st_layout(bert_dir, tmp_path / "st", pooling, extra_modules=extra)
    with pytest.raises(ModelError, match=message):
        open_checkpoint(str(folder))
    res = simcli("info", str(folder))
    assert res.exit_code == 1 and res.stderr.startswith("simcli: error: ") and res.stderr.count("\n") == 1


def test_default_prompt_is_refused(bert_dir: Path, tmp_path: Path) -> None:
    folder = st_layout(bert_dir, tmp_path / "st", {"pooling_mode_mean_tokens": True})
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: "}, "default_prompt_name": "query"})
    )
    with pytest.raises(
        ModelError, match=r"default_prompt_name 'query' is not supported \(simcli adds no prompts\)"
    ):
        open_checkpoint(str(folder))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("last_mean", "last-avg"), ("cls", "cls"), ("first_last_mean", "first-last-avg")],
)
def test_uniem_strategy_sets_auto_pooling(
    bert_dir: Path, tmp_path: Path, strategy: str, expected: str
) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", {"do_lower_case": False}, uniem_embedding_strategy=strategy)
    enc = load_encoder(str(folder), dtype="float32")
    assert enc.pooling == expected and enc.info()["sources"]["pooling"] == "config"
    assert enc.spec.pooling == expected  # what store and index manifests record


def test_unknown_uniem_strategy_is_refused(bert_dir: Path, tmp_path: Path) -> None:
    folder = m3e_layout(bert_dir, tmp_path / "m", None, uniem_embedding_strategy="last_weighted")
    with pytest.raises(ModelError, match=r"uniem_embedding_strategy 'last_weighted' is not supported"):
        open_checkpoint(str(folder))


def test_info_table_prints_a_source_for_every_resolved_setting(bert_dir: Path, tmp_path: Path) -> None:
    folder = st_layout(bert_dir, tmp_path / "st", {"pooling_mode_mean_tokens": True}, normalize=True)
    res = simcli("info", str(folder), "--dtype", "float32")
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert rows["pooling"].split() == ["pooling", "last-avg", "(sentence-transformers", "modules)"]
    assert rows["normalize"].split() == ["normalize", "True", "(sentence-transformers", "modules)"]
    assert rows["lowercase"].split() == ["lowercase", "True", "(tokenizer", "config)"]
    assert rows["dtype"].split() == ["dtype", "float32", "(--dtype)"]
    assert rows["max_length"].split() == ["max_length", "64", "(simcli", "default)"]
    # every setting resolved from the checkpoint or a default says where it came from
    for key in (
        "family",
        "tokenizer",
        "pooling",
        "lowercase",
        "strip_accents",
        "chinese_chars",
        "normalize",
        "include_prompt",
        "pooler_activation",
        "dim",
        "layers",
        "heads",
        "max_positions",
        "max_length",
        "max_length_limit",
        "vocab_size",
        "device",
        "dtype",
    ):
        assert rows[key].rstrip().endswith(")"), rows[key]


def test_copy_keeps_layout(bert_dir: Path, tmp_path: Path) -> None:
    # the layouts are copies: the session fixture is untouched
    st_layout(bert_dir, tmp_path / "st", {"pooling_mode_mean_tokens": True})
    assert not (bert_dir / "modules.json").exists()
    shutil.rmtree(tmp_path / "st")
