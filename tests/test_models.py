"""open_clip models, the zero-shot head and safetensors checkpoints."""

import open_clip
import pytest
import torch

import flyp.models
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


def test_zero_shot_head_in_prompt_batches_equals_the_single_forward():
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t").eval()
    tok = get_tokenizer("flyp-tiny-rn10t")
    classes = ["circle", "square", "triangle", "star", "cross"]
    templates = ["a photo of a {}.", "a {} shape.", "a drawing of a {}."]
    # 7 prompts a forward: a class's templates straddle two forwards.
    head = build_zero_shot_head(clip, tok, classes, templates, prompts_per_forward=7)
    whole = open_clip.build_zero_shot_classifier(clip, tok, classes, templates,
                                                 num_classes_per_batch=None)  # (D, C)
    torch.testing.assert_close(head.weight, whole.T * clip.logit_scale.exp())
    assert torch.all(head.bias == 0)


def test_zero_shot_head_never_sends_more_than_the_prompt_budget_through_the_text_tower():
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t").eval()
    encode_text, sizes = clip.encode_text, []

    def spy(tokens, *args, **kwargs):
        sizes.append(len(tokens))
        return encode_text(tokens, *args, **kwargs)

    clip.encode_text = spy
    budget = flyp.models.PROMPTS_PER_FORWARD
    classes = [f"class {i}" for i in range(budget // 2)]  # 4 templates: twice the budget
    head = build_zero_shot_head(clip, get_tokenizer("flyp-tiny-rn10t"), classes,
                                ["a {}.", "the {}.", "one {}.", "my {}."])
    assert head.weight.shape == (len(classes), 128)
    assert max(sizes) <= budget and sum(sizes) == 4 * len(classes)


def test_quickgelu_weights_in_a_gelu_model_are_refused():
    with pytest.raises(UserError, match="QuickGELU"):
        check_quickgelu("ViT-B-16", "openai")
    check_quickgelu("ViT-B-16-quickgelu", "openai")
    check_quickgelu("ViT-B-16", "laion2b_s34b_b88k")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="unknown model"):
        create_clip("no-such-model")
