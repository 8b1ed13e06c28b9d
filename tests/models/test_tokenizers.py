"""Tokenizers: exact tokens of the char tokenizer (BERT) and the WoBERT jieba word tokenizer (kexue.fm/archives/7758).

The tiny vocabularies come from simcli/models/demo.py: char = BERT specials + a few ASCII pieces (no "##d",
"##2", ...) + 1500 frequent CJK characters; word = that + the 2000 most frequent multi-character jieba
words. Sentences are real ones from LCQMC, BQ, ATEC, PAWSX and STS-B (../shared/data) unless marked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

import jieba
import pytest

from simcli.errors import UsageError
from simcli.models.tokenizers import CharTokenizer, load_tokenizer
from simcli.models.word_tokenizer import WORD_MAX_CHARS, WordTokenizer
from tests.checkpoints import CLS_ID, SEP_ID, UNK_ID, word_vocab

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"

# (text, WoBERT tokens with the tiny word vocab). In-vocab jieba words stay whole ("英雄", "没有", "取消");
# out-of-vocab ones ("联盟", "最好", "手机游戏") are split into characters; lower-case happens before jieba.
WORD_CASES = [
    ("英雄联盟什么英雄最好", ["英雄", "联", "盟", "什么", "英雄", "最", "好"]),
    (
        "借了钱，但还没有通过，可以取消吗？",
        ["借", "了", "钱", "，", "但", "还", "没有", "通过", "，", "可以", "取消", "吗", "？"],
    ),
    # "3d" is one jieba word; no "##d" in the vocab, so the whole chunk is [UNK] (BERT's rule, not "3" [UNK]).
    (
        "手机游戏天龙八部3d好玩吗,和电脑上的有什么不同",
        [
            "手",
            "机",
            "游",
            "戏",
            "天",
            "龙",
            "八",
            "部",
            "[UNK]",
            "好",
            "玩",
            "吗",
            ",",
            "和",
            "电脑",
            "上",
            "的",
        ]
        + ["有", "什么", "不同"],
    ),
    ("你今天心情不好吗.PDF", ["你", "今天", "心情", "不好", "吗", ".", "[UNK]"]),
    # upper case ASCII: "PSP" -> "psp" (not in vocab -> [UNK]); "猎人" is out of vocab and "猎" is not a vocab char.
    (
        "PSP难以理解怪物猎人2G有什么好玩的",
        ["[UNK]", "难以", "理解", "怪", "物", "[UNK]", "人", "[UNK]", "有", "什么", "好", "玩", "的"],
    ),
    # half-width spaces dropped between ASCII words and Chinese (PAWSX)
    (
        "Tabaci 河是罗马尼亚 Leurda 河的支流。",
        ["[UNK]", "河", "是", "罗", "马", "尼", "亚", "[UNK]", "河", "的", "支", "流", "。"],
    ),
    # full-width brackets are punctuation and in the vocab
    (
        "怎么设置超级QQ全天在线（移动手机开通的）",
        [
            "怎么",
            "设置",
            "超",
            "级",
            "[UNK]",
            "全",
            "天",
            "在",
            "线",
            "（",
            "移动",
            "手机",
            "开",
            "通",
            "的",
            "）",
        ],
    ),
    # full-width letters: not NFKC-folded, and jieba cuts them one by one -> one [UNK] per letter
    ("是ＱＱ钱包的微粒贷吗", ["是", "[UNK]", "[UNK]", "钱", "包", "的", "微", "[UNK]", "贷", "吗"]),
    # ideographic spaces (U+3000) dropped (BQ)
    (
        "花呗pc服务已转移到移动端\u3000\u3000，是什么意思",
        ["花", "[UNK]", "[UNK]", "服务", "已", "转移", "到", "移动", "端", "，", "是", "什么", "意思"],
    ),
    ("为什么我无法看到额度", ["为什么", "我", "无法", "看到", "额", "度"]),
    (
        "一个女孩在给她的头发做发型。",
        ["一个", "女", "孩", "在", "给", "她", "的", "头发", "做", "发", "型", "。"],
    ),
    # the vocab's "iphone" is a jieba word here; "12" needs "##2" (absent) -> [UNK]  (sentence by simcli)
    (
        "用iPhone 12拍夜景效果好不好",
        ["用", "iphone", "[UNK]", "拍", "夜", "景", "效果", "好", "不", "好"],
    ),
    # "iphone12" is ONE jieba word (jieba buffers ASCII runs), out of vocab -> WordPiece "iphone" "##12"
    ("用iPhone12拍照", ["用", "iphone", "##12", "拍", "照"]),
    # accents stripped (NFD, drop Mn) and lower-cased before lookup  (by simcli)
    ("Hélló Wörld，ÀPP和VIP！", ["hello", "world", "，", "app", "和", "vip", "！"]),
    # full-width digits/letters: one [UNK] each; full-width punctuation kept  (by simcli)
    ("１２３元ＯＫ吗？", ["[UNK]", "[UNK]", "[UNK]", "元", "[UNK]", "[UNK]", "吗", "？"]),
    # digits with a half-width point: "3" "." "14"; "14" needs "##4" -> [UNK]  (by simcli)
    (
        "用iPhone12拍照，花了3.14元!",
        ["用", "iphone", "##12", "拍", "照", "，", "花", "了", "3", ".", "[UNK]", "元", "!"],
    ),
    ("😀表情包", ["[UNK]", "表", "情", "包"]),  # emoji -> [UNK]  (by simcli)
    # tabs, newlines, leading/trailing spaces dropped  (by simcli)
    ("\t 我喜欢\n北京天安门  ", ["我", "喜欢", "北京", "天安门"]),
    ("hello world, 你好 世界", ["hello", "world", ",", "你", "好", "世界"]),
    # control characters are NOT removed before jieba (bert4keras): U+200B splits "北京" into two jieba
    # words; BERT's path then drops U+200B and NUL.  (by simcli)
    ("北\u200b京\x00欢迎你", ["北", "京", "欢迎", "你"]),
    # "c++" is one jieba word (its regex keeps + # & . _ % -); BERT's path splits the punctuation  (by simcli)
    ("C++和Python", ["c", "+", "+", "和", "[UNK]"]),
    ("", []),
    (" \u3000\t", []),
]

# The same sentences through the plain BERT char tokenizer (RoFormer-Sim vocab).
CHAR_CASES = [
    ("英雄联盟什么英雄最好", ["英", "雄", "联", "盟", "什", "么", "英", "雄", "最", "好"]),
    ("你今天心情不好吗.PDF", ["你", "今", "天", "心", "情", "不", "好", "吗", ".", "[UNK]"]),
    # the char tokenizer sees "ＱＱ" as one word -> a single [UNK]
    ("是ＱＱ钱包的微粒贷吗", ["是", "[UNK]", "钱", "包", "的", "微", "[UNK]", "贷", "吗"]),
    ("用iPhone12拍照", ["用", "iphone", "##12", "拍", "照"]),
    ("Hélló Wörld，ÀPP和VIP！", ["hello", "world", "，", "app", "和", "vip", "！"]),
    ("１２３元ＯＫ吗？", ["[UNK]", "元", "[UNK]", "吗", "？"]),
    (
        "用iPhone12拍照，花了3.14元!",
        ["用", "iphone", "##12", "拍", "照", "，", "花", "了", "3", ".", "[UNK]", "元", "!"],
    ),
    ("\t 我喜欢\n北京天安门  ", ["我", "喜", "欢", "北", "京", "天", "安", "门"]),
    ("hello world, 你好 世界", ["hello", "world", ",", "你", "好", "世", "界"]),
    ("北\u200b京\x00欢迎你", ["北", "京", "欢", "迎", "你"]),
    (
        "花呗pc服务已转移到移动端\u3000\u3000，是什么意思",
        ["花", "[UNK]", "[UNK]", "服", "务", "已", "转", "移", "到", "移", "动", "端", "，", "是", "什", "么"]
        + ["意", "思"],
    ),
]

REAL = [text for text, _ in WORD_CASES[:13]]


@pytest.fixture(scope="module")
def word(wobert_dir: Path) -> WordTokenizer:
    return WordTokenizer(wobert_dir / "vocab.txt")


@pytest.fixture(scope="module")
def char(roformer_sim_dir: Path) -> CharTokenizer:
    return CharTokenizer(roformer_sim_dir / "vocab.txt")


def _norm(text: str) -> str:
    """The WoBERT tokenizer's first step (kexue.fm/archives/7758), restated: lower-case, NFD, drop combining marks."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def _reference_tokens(text: str, vocab: dict[str, int], bert: CharTokenizer) -> list[str]:
    """The WoBERT rule computed independently: jieba, vocab lookup, HF's Rust BERT tokenizer for the rest."""
    out: list[str] = []
    for w in jieba.cut(_norm(text), HMM=False):
        out += [w] if w in vocab else bert.tokenize(w)
    return out


def test_vocab_premise(word: WordTokenizer) -> None:
    """The cases below rely on which words the tiny WoBERT vocab has."""
    assert {"英雄", "什么", "没有", "取消", "天安门", "iphone", "##12"} <= word.vocab.keys()
    assert not {"联盟", "最好", "手机游戏", "猎", "##2", "##d", "ｑ", "北京欢迎"} & word.vocab.keys()
    assert (word.unk_id, word.cls_id, word.sep_id) == (UNK_ID, CLS_ID, SEP_ID)


@pytest.mark.parametrize(("text", "tokens"), WORD_CASES)
def test_word_tokens(word: WordTokenizer, text: str, tokens: list[str]) -> None:
    """Exact WoBERT tokens: jieba words in the vocab kept whole, the rest tokenised the BERT way."""
    assert word.tokenize(text) == tokens
    assert word.encode(text) == [CLS_ID, *(word.vocab[t] for t in tokens), SEP_ID]


@pytest.mark.parametrize(("text", "tokens"), CHAR_CASES)
def test_char_tokens(char: CharTokenizer, text: str, tokens: list[str]) -> None:
    """Exact BERT char tokens (RoFormer-Sim): every CJK character alone, no jieba."""
    assert char.tokenize(text) == tokens
    assert char.encode(text) == [CLS_ID, *(char.vocab[t] for t in tokens), SEP_ID]


def test_in_vocab_jieba_words_are_the_tokens(word: WordTokenizer) -> None:
    """Where every jieba word is in the vocab, the tokens are exactly jieba's words of the lower-cased text."""
    checked = 0
    for text in REAL + ["借了钱，但还没有通过，可以取消吗？", "我喜欢北京天安门！", "今天的天气非常好。"]:
        words = list(jieba.cut(text.lower(), HMM=False))
        if all(w in word.vocab for w in words):
            assert word.tokenize(text) == words
            checked += any(len(w) > 1 for w in words)
    assert checked >= 2  # premise: some sentences with multi-character words were compared


def test_word_equals_reference_rule_on_real_sentences(word: WordTokenizer, wobert_dir: Path) -> None:
    """Up to 600 sentences of each data set: our tokens == jieba + vocab + HF Rust BERT for the leftovers."""
    texts = REAL + _data_sentences(600)
    bert = CharTokenizer(wobert_dir / "vocab.txt")
    whole = split = 0
    for text in texts:
        tokens = word.tokenize(text)
        assert tokens == _reference_tokens(text, word.vocab, bert), text
        whole += any(len(t) > 1 and "\u4e00" <= t[0] <= "\u9fff" for t in tokens)
        split += tokens != [w for w in jieba.cut(_norm(text), HMM=False) if w.strip()]
    assert whole > len(texts) // 3 and split > len(texts) // 3  # premise: both paths are exercised


def test_word_vocab_without_words_equals_char_tokenizer(word: WordTokenizer, roformer_sim_dir: Path) -> None:
    """With a char vocab (no multi-character words) the word tokenizer is BERT's, token for token, except
    where jieba cuts a run of non-[a-z0-9] letters into single characters (full-width, kana, "ß", ...)."""
    vocab = roformer_sim_dir / "vocab.txt"
    as_word, as_char = WordTokenizer(vocab), CharTokenizer(vocab)
    compared = 0
    from_data = _data_sentences(600)
    for text in REAL + from_data:
        if any(_jieba_singles(c) for c in _norm(text)):
            continue
        assert as_word.tokenize(text) == as_char.tokenize(text), text
        compared += 1
    # the premise: most sentences were compared (the data sets add ~3,000 when ../shared/data is present)
    assert compared >= (len(REAL) + len(from_data)) * 0.8
    assert as_word.tokenize("是ＱＱ钱包") == ["是", "[UNK]", "[UNK]", "钱", "包"]  # the documented exception
    assert as_char.tokenize("是ＱＱ钱包") == ["是", "[UNK]", "钱", "包"]


def _jieba_singles(ch: str) -> bool:
    """A letter-like character that jieba does not group with its neighbours."""
    return not (
        ch.isascii() or ch.isspace() or "\u4e00" <= ch <= "\u9fff" or unicodedata.category(ch)[0] in "PS"
    )


def _data_sentences(per_set: int) -> list[str]:
    """The first sentences of each classic test split (../shared/data is beside the repo in CI)."""
    out: list[str] = []
    for name in ("LCQMC", "BQ", "ATEC", "PAWSX", "STS-B"):
        path = DATA / name / f"{name}.test.data"
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i * 2 >= per_set:
                    break
                out += line.rstrip("\n").split("\t")[:2]
    return out


def test_jieba_without_hmm(tmp_path: Path) -> None:
    """HMM=False: words jieba's HMM would discover ("这是", "姚笛") are never produced, even when in the vocab."""
    (tmp_path / "vocab.txt").write_text(
        "\n".join(word_vocab() + ["这是", "姚笛", "姚", "笛"]) + "\n", "utf-8"
    )
    tok = WordTokenizer(tmp_path / "vocab.txt")
    text = "文章真的爱姚笛吗，这是什么意思"
    assert {"这是", "姚笛"} <= set(jieba.cut(text, HMM=True))  # premise: HMM would make them words
    assert tok.tokenize(text) == ["文章", "真的", "爱", "姚", "笛", "吗", "，", "这", "是", "什么", "意思"]


def test_word_max_chars(word: WordTokenizer) -> None:
    """bert4keras' word_maxlen: a chunk of 200 characters is still WordPiece'd, 201 is one [UNK]."""
    assert WORD_MAX_CHARS == 200
    assert word.tokenize("iphone" + "s" * 194) == ["iphone"] + ["##s"] * 194
    assert word.tokenize("iphone" + "s" * 195) == ["[UNK]"]


@pytest.mark.parametrize("kind", ["word", "char"])
def test_truncation(word: WordTokenizer, char: CharTokenizer, kind: str) -> None:
    """Cut to max_length tokens in all, [SEP] last; `truncated` counts the texts that were cut."""
    tok = word if kind == "word" else char
    long = "借了钱，但还没有通过，可以取消吗？"
    full = tok.encode(long, max_length=512)
    n = len(full)
    assert n > 10
    batch = tok.encode_batch([long, "我", long, long], max_length=n)  # exactly fits: nothing cut
    assert batch.truncated == 0 and batch.ids[0] == full
    batch = tok.encode_batch([long, "我", long], max_length=n - 1)
    assert batch.truncated == 2
    assert batch.ids[0] == full[: n - 2] + [SEP_ID] == batch.ids[2]
    assert batch.ids[1] == [CLS_ID, tok.vocab["我"], SEP_ID]
    assert tok.encode_batch([long], max_length=3).ids == [[CLS_ID, full[1], SEP_ID]]
    with pytest.raises(UsageError, match="--max-length must be at least 3"):
        tok.encode_batch([long], max_length=2)


def test_very_long_text(word: WordTokenizer) -> None:
    """A 200k-character line: the first max_length tokens equal those of the full tokenisation."""
    text = "借了钱，但还没有通过，可以取消吗？ PSP难以理解怪物猎人2G有什么好玩的\n" * 5000
    full = word.tokenize(text)
    assert len(full) == 5000 * 26
    batch = word.encode_batch([text], max_length=64)
    assert batch.truncated == 1
    assert batch.ids[0] == [CLS_ID, *(word.vocab[t] for t in full[:62]), SEP_ID]
    for n in (128, 129):  # the longest text remembered whole, and the shortest tokenised lazily
        head = word.tokenize(text[:n])
        assert word.encode_batch([text[:n]], 512).ids[0] == [CLS_ID, *(word.vocab[t] for t in head), SEP_ID]
        assert word.encode_batch([text[:n]], 40).ids[0][1:-1] == [word.vocab[t] for t in head[:38]]


def test_decode_mixed_chinese_english(word: WordTokenizer, char: CharTokenizer) -> None:
    """decode(encode(text)): specials dropped, CJK words joined, ASCII words spaced, ## pieces glued."""
    assert word.decode(word.encode("用iPhone12拍照")) == "用iphone12拍照"
    assert word.decode(word.encode("hello world, 你好 世界")) == "hello world, 你好世界"
    assert word.decode(word.encode("Hélló Wörld，ÀPP和VIP！")) == "hello world，app和vip！"
    assert word.decode(word.encode("我喜欢北京天安门！")) == "我喜欢北京天安门！"
    assert char.decode(char.encode("用iPhone12拍照，花了3元!")) == "用iphone12拍照，花了3元!"


def test_load_tokenizer(wobert_dir: Path, roformer_sim_dir: Path) -> None:
    tok = load_tokenizer(wobert_dir / "vocab.txt", "word")
    assert isinstance(tok, WordTokenizer) and tok.kind == "word"
    assert tok.tokenize("为什么我无法看到额度")[0] == "为什么"
    assert load_tokenizer(roformer_sim_dir / "vocab.txt", "char").kind == "char"


def test_threads_agree(word: WordTokenizer) -> None:
    """The encoder tokenises in a background thread: concurrent use gives the same ids."""
    texts = REAL * 20
    expected = word.encode_batch(texts, 32).ids
    results: list[list[list[int]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(word.encode_batch(texts, 32).ids)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_jieba_is_quiet(wobert_dir: Path, tmp_path: Path) -> None:
    """jieba's "Building prefix dict ..." log must not reach stderr (it loads once, lazily)."""
    code = (
        "import sys; from simcli.models.word_tokenizer import WordTokenizer;"
        f"t = WordTokenizer({str(wobert_dir / 'vocab.txt')!r});"
        "assert 'jieba' not in sys.modules;"
        "print(t.tokenize('我喜欢北京'), t.tokenize('今天'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}  # no jieba cache: a full load
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "['我', '喜欢', '北京'] ['今天']\n"
    assert r.stderr == ""
