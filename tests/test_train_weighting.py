import pytest

from lora_gradio.engine.train.weighting import encode_weighted_prompts, parse_weights


def test_webui_attention_syntax():
    assert parse_weights("a (b:1.5) c") == [("a ", 1.0), ("b", 1.5), (" c", 1.0)]
    assert parse_weights("(b)") == [("b", pytest.approx(1.1))]
    assert parse_weights("((b))") == [("b", pytest.approx(1.21))]
    assert parse_weights("[b]") == [("b", pytest.approx(1 / 1.1))]
    assert parse_weights(r"\(literal\)") == [("(literal)", 1.0)]
    assert parse_weights("(unclosed") == [("unclosed", pytest.approx(1.1))]
    assert parse_weights("x:y") == [("x:y", 1.0)]


def test_plain_captions_encode_exactly_as_unweighted(tmp_path):
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_gradio.engine.train.prompts import encode_prompts
    from tests.tiny_sd import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "tiny")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        for length in (75, 225):
            plain = encode_prompts(tokenizer, encoder, ["tiny_char, 1girl, smile"], length, 2)
            same = encode_weighted_prompts(tokenizer, encoder, ["tiny_char, 1girl, smile"], length, 2)
            assert torch.allclose(plain, same, atol=1e-5)
        weighted = encode_weighted_prompts(tokenizer, encoder, ["tiny_char, (1girl:1.5), smile"], 75, 2)
        plain = encode_prompts(tokenizer, encoder, ["tiny_char, 1girl, smile"], 75, 2)
    assert weighted.shape == plain.shape and not torch.allclose(weighted, plain)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-5)  # emphasis, not magnitude
