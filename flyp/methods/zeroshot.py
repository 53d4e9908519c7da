"""Zero-shot: the pretrained CLIP with the head built from class-name templates (no training)."""

from flyp.methods import Context, Method, register_method
from flyp.models import ImageClassifier


@register_method("zeroshot")
class ZeroShot(Method):
    trains = False
    seeded = False  # no random draw: the same run for every seed
    head_from_text = True
    description = "pretrained CLIP, head from averaged template embeddings"

    def classifier(self, ctx: Context) -> ImageClassifier:
        clip = ctx.fresh_clip()
        return ImageClassifier(clip, ctx.zero_shot_head(clip))
