"""Tests for layerprobe.io.tokenizer: truncation lengths the tokenizer can really give."""

from __future__ import annotations

import pytest

from layerprobe.errors import LayerProbeError
from layerprobe.io.tokenizer import check_encoded_lengths
from layerprobe.model.batching import encode


@pytest.mark.parametrize("max_length, longest, needle", [(1, 8, "is below what the tokenizer can produce"),
                                                         (2, 2, "leaves no room for text")])
def test_max_length_below_the_special_tokens_is_refused(tokenizer, max_length, longest, needle):
    """``--max-length 1`` was ignored: BERT's tokenizer returned full-length texts, meta said 1."""
    texts = ["good movie with a long plot", "bad"]
    examples = encode(tokenizer, texts, max_length)
    assert max(len(e["input_ids"]) for e in examples) == longest  # what the tokenizer really does
    with pytest.raises(LayerProbeError) as info:
        check_encoded_lengths(tokenizer, examples, max_length)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"--max-length {max_length} {needle}" in msg and "special tokens take 2" in msg
    assert "use --max-length 3 or more" in msg


def test_max_length_that_leaves_room_for_text_is_accepted(tokenizer):
    examples = encode(tokenizer, ["good movie with a long plot"], 3)
    assert [len(e["input_ids"]) for e in examples] == [3]
    check_encoded_lengths(tokenizer, examples, 3)
