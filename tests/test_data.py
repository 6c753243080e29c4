"""Text sources: a file of any name is plain text (.jsonl excepted), and bad files are one-line errors."""

from __future__ import annotations

import json
import math

import pytest

import edgeprune
from edgeprune.data import check_text, load_text
from edgeprune.errors import EdgepruneError

BODY = "GNU GENERAL PUBLIC LICENSE\n\n  Version 3, 29 June 2007 {not json}\n\nTerms and conditions.\n"


@pytest.mark.parametrize("name", ["GPL-3", "notes.md", "c.txt", "archive.json"])
def test_a_file_of_any_name_is_read_as_plain_text(tmp_path, name):
    (tmp_path / name).write_text(BODY, encoding="utf-8")
    assert load_text(str(tmp_path / name), "eval") == BODY
    check_text(str(tmp_path / name), "eval", len(BODY.encode()), "--text")


def test_jsonl_is_the_one_suffix_parsed(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ("one", "two")) + "\n\n")
    assert load_text(str(tmp_path / "c.jsonl"), "eval") == "one\n\ntwo"


@pytest.mark.parametrize("name, content, message", [
    ("LICENSE", None, "not found"),
    ("EMPTY", " \n\n", "is empty"),
    ("BLOB", b"\xff\xfe\x00binary", "is not UTF-8 text"),
])
def test_missing_empty_or_binary_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(EdgepruneError, match=message) as caught:
        load_text(str(path), "eval")
    assert "\n" not in str(caught.value)


def test_eval_reads_a_text_file_without_suffix(tiny_llama_dir, tmp_path):
    from edgeprune.data import pydoc_text

    licence = tmp_path / "COPYING"
    licence.write_text(pydoc_text("eval")[:4000])
    result = edgeprune.evaluate(str(tiny_llama_dir), text=str(licence), seqlen=32, max_windows=2, attention=False)
    assert result.text == str(licence) and result.tokens == 64 and math.isfinite(result.perplexity)
