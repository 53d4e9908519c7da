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
    preprocess_transforms,
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
            clip.encode_text(tok([t.format("circle") for t in templates])), dim=-1
        ).mean(0)
    torch.testing.assert_close(head.weight[0] / scale, emb / emb.norm())


def test_zero_shot_head_in_prompt_batches_equals_the_single_forward():
    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t").eval()
    tok = get_tokenizer("flyp-tiny-rn10t")
    classes = ["circle", "square", "triangle", "star", "cross"]
    templates = ["a photo of a {}.", "a {} shape.", "a drawing of a {}."]
    # 7 prompts a forward: a class's templates straddle two forwards.
    head = build_zero_shot_head(clip, tok, classes, templates, prompts_per_forward=7)
    whole = open_clip.build_zero_shot_classifier(
        clip, tok, classes, templates, num_classes_per_batch=None
    )  # (D, C)
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
    head = build_zero_shot_head(
        clip, get_tokenizer("flyp-tiny-rn10t"), classes, ["a {}.", "the {}.", "one {}.", "my {}."]
    )
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


@pytest.mark.parametrize(
    "repo",
    [
        "models--timm--vit_base_patch16_clip_224.openai",
        "models--timm--vit_base_patch16_clip_224.metaclip_400m",
        "vit_base_patch16_clip_224.metaclip_400m",
    ],
)
def test_weights_from_the_hub_cache_of_a_quickgelu_tag_need_a_quickgelu_model(tmp_path, repo):
    # How huggingface_hub caches open_clip's QuickGELU tags: the file name says nothing.
    snapshot = tmp_path / "hub" / repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    weights = snapshot / "open_clip_model.safetensors"
    weights.write_bytes(b"weights")
    link = tmp_path / "weights.safetensors"  # a link to the cache is judged by its target
    link.symlink_to(weights)
    for path in (weights, link):
        with pytest.raises(UserError, match="ViT-B-16-quickgelu"):
            check_quickgelu("ViT-B-16", str(path))
        check_quickgelu("ViT-B-16-quickgelu", str(path))


def test_weights_of_a_gelu_tag_or_only_named_like_an_openai_download_pass(tmp_path):
    gelu = tmp_path / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K" / "snapshots" / "0123"
    gelu.mkdir(parents=True)
    (gelu / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    check_quickgelu("ViT-B-16", str(gelu / "open_clip_pytorch_model.bin"))
    # open_clip names OpenAI's download ViT-B-16.pt; its SHA-256 (in the URL) tells it apart.
    (tmp_path / "ViT-B-16.pt").write_bytes(b"my own GELU weights")
    check_quickgelu("ViT-B-16", str(tmp_path / "ViT-B-16.pt"))


def test_open_clips_download_of_the_openai_weights_needs_a_quickgelu_model(tmp_path, monkeypatch):
    # ~/.cache/clip/ViT-B-16.pt: the name is generic, the SHA-256 in OpenAI's URL is not.
    digest = open_clip.get_pretrained_url("ViT-B-16", "openai").split("/")[-2]
    monkeypatch.setattr(flyp.models, "sha256_file", lambda path: digest)  # 335 MB not needed
    (tmp_path / "ViT-B-16.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match="QuickGELU"):
        check_quickgelu("ViT-B-16", str(tmp_path / "ViT-B-16.pt"))


# ----------------------------------------------------------------------------------------------
# Preprocessing recorded with the weights

# A tag with its own preprocessing (SigLIP-like): not the architecture's default.
OWN_PREPROCESS = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "resize_mode": "squash",
    "fill_color": 0,
}


def test_pretrained_command_records_the_preprocessing_and_activation_of_the_weights(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from flyp.cli import main

    torch.manual_seed(0)
    clip = create_clip("flyp-tiny-rn10t")
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    out = tmp_path / "pretrained.safetensors"
    done = CliRunner().invoke(
        main,
        [
            "pretrained",
            "--model",
            "flyp-tiny-rn10t",
            "--pretrained",
            str(weights),
            "--out",
            str(out),
            "--log-csv",
            str(tmp_path / "log.csv"),
        ],
    )
    assert done.exit_code == 0, done.output
    info = load_checkpoint(out).info
    assert info["quick_gelu"] is False
    assert info["preprocess"] == {
        "size": [32, 32],
        "mode": "RGB",
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


@pytest.fixture()
def own_preprocess_pretrained(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "pretrained.safetensors"
    save_checkpoint(
        path,
        "flyp-tiny-rn10t",
        create_clip("flyp-tiny-rn10t"),
        info={"stage": "pretrained", "preprocess": OWN_PREPROCESS, "quick_gelu": False},
    )
    return path


def test_finetune_evaluate_ensemble_and_features_use_the_recorded_preprocessing(
    tmp_path, monkeypatch, tiny_tables, tiny_captions, own_preprocess_pretrained
):
    import flyp.datasets.tables
    import flyp.features
    import flyp.finetuning
    from flyp.ensemble import run_ensemble
    from flyp.evaluation import evaluate_checkpoint
    from flyp.features import write_features
    from flyp.finetuning import finetune
    from flyp.training import TrainConfig

    seen = []  # (what, transform) of every image table and method context made
    table, context = flyp.datasets.tables.ImageTable, flyp.finetuning.Context

    def spy_table(path, transform, *args, **kwargs):
        seen.append(("table", transform))
        return table(path, transform, *args, **kwargs)

    def spy_context(**kwargs):
        seen.extend([("train", kwargs["train_transform"]), ("eval", kwargs["eval_transform"])])
        return context(**kwargs)

    monkeypatch.setattr(flyp.datasets.tables, "ImageTable", spy_table)
    monkeypatch.setattr(flyp.features, "ImageTable", spy_table)
    monkeypatch.setattr(flyp.finetuning, "Context", spy_context)
    normalised = []  # (mean, std) of every batch normalised for a model
    normalise = flyp.models.normalise_images

    def spy_normalise(images, mean, std):
        normalised.append((mean.flatten().tolist(), std.flatten().tolist()))
        return normalise(images, mean, std)

    monkeypatch.setattr(flyp.models, "normalise_images", spy_normalise)
    zs = tmp_path / "zeroshot.safetensors"
    finetune(
        "embedded",
        tiny_tables,
        tiny_captions,
        own_preprocess_pretrained,
        "zeroshot",
        TrainConfig(epochs=0, lr=1e-5, wd=0.0, batch_size=8, warmup_steps=0, seed=0),
        options={},
        out=zs,
        log_csv=tmp_path / "log.csv",
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    assert load_checkpoint(zs).info["preprocess"] == OWN_PREPROCESS  # carried forward
    evaluate_checkpoint(
        "embedded",
        tiny_tables,
        zs,
        metrics_out=tmp_path / "m.json",
        provenance_out=tmp_path / "p.json",
        log=lambda m: None,
    )
    run_ensemble(
        "embedded",
        tiny_tables,
        zs,
        zs,
        [0.5],
        curve_out=tmp_path / "c.csv",
        metrics_out=tmp_path / "w.json",
        log=lambda m: None,
    )
    write_features(zs, tiny_tables, tmp_path / "features.safetensors")
    assert {what for what, _ in seen} == {"train", "eval", "table"}
    recorded = {repr(t) for t in preprocess_transforms(OWN_PREPROCESS)}  # squash, bilinear
    for what, transform in seen:
        assert repr(transform) in recorded, what
    # the images are normalised on the model's device with the recorded mean and std
    assert normalised and all(m == [0.5] * 3 and s == [0.25] * 3 for m, s in normalised)
