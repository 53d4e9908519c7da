"""LP-FT (Kumar et al., ICLR 2022): first a linear probe, then full finetuning (image encoder +
head, cross-entropy) starting from the probe's head, usually with a smaller learning rate (set
``method_options.lpft.lr`` in params). Option ``init_head``: the LP checkpoint. The head reads the
features the probe was fitted on: L2-normalised, or raw when the probe's were."""

from flyp.methods import Context, Method, register_method
from flyp.methods.ft import CrossEntropyTask, freeze_text_tower
from flyp.models import ImageClassifier, head_from_state, load_checkpoint, normalizes_features


@register_method("lpft")
class LinearProbeThenFinetune(Method):
    description = "linear probe, then full finetuning from its head"
    inputs = {"init_head": "method:lp"}

    def task(self, ctx: Context) -> CrossEntropyTask:
        probe = load_checkpoint(self.option(ctx, "init_head"))
        clip = ctx.fresh_clip()
        freeze_text_tower(clip)
        head = head_from_state(probe.head).to(ctx.device)
        normalize = normalizes_features(probe.info)
        if not normalize:
            ctx.notes["normalize_features"] = False
        return CrossEntropyTask(ctx, ImageClassifier(clip, head, normalize))
