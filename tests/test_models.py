"""open_clip models, the zero-shot head and safetensors checkpoints."""

import pytest
import torch

from flyp.io import UserError
from flyp.models import (
    build_zero_shot_head,
    check_quickgelu,
    classifier_from_checkpoint,
    create_clip,
    get_tokenizer,
    load_checkpoint,
    save_checkpoint,
)


def test_checkpoint_round_trip_keeps_weights_head_and_info(tmp_path):
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t")
    head = torch.nn.Linear(128, 12)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, "flyp-tiny-rn10t", clip, head, {"best_epoch": 3})
    ckpt = load_checkpoint(path)
    assert ckpt.info == {"best_epoch": 3}
    classifier = classifier_from_checkpoint(ckpt).eval()
    clip.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = head(torch.nn.functional.normalize(clip.encode_image(x), dim=-1))
    torch.testing.assert_close(classifier(x), expected)


def test_foreign_or_missing_checkpoint_is_a_clear_error(tmp_path):
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="x.safetensors"):
        load_checkpoint(bogus)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_zero_shot_head_is_scaled_normalised_template_mean():
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t").eval()
    tok = get_tokenizer("flyp-tiny-rn10t")
    classes, templates = ["circle", "square"], ["a photo of a {}.", "a {} shape."]
    head = build_zero_shot_head(clip, tok, classes, templates)
    assert head.weight.shape == (2, 128)
    assert torch.all(head.bias == 0)
    scale = clip.logit_scale.exp().item()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((2,), scale))
    with torch.no_grad():
        emb = torch.nn.functional.normalize(
            clip.encode_text(tok([t.format("circle") for t in templates])), dim=-1).mean(0)
    torch.testing.assert_close(head.weight[0] / scale, emb / emb.norm())


def test_quickgelu_weights_in_a_gelu_model_are_refused():
    with pytest.raises(UserError, match="QuickGELU"):
        check_quickgelu("ViT-B-16", "openai")
    check_quickgelu("ViT-B-16-quickgelu", "openai")
    check_quickgelu("ViT-B-16", "laion2b_s34b_b88k")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model"):
        create_clip("no-such-model")
