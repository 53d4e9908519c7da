"""L2-SP (Li et al., ICML 2018): FT plus ``lambda * ||theta - theta_0||^2`` on the image encoder,
pulling the finetuned weights towards the pretrained ones (theta_0). Option ``lambda``."""

from flyp.methods import Context, Method, Option, register_method
from flyp.methods.ft import CrossEntropyTask, FullFinetune


class L2SPTask(CrossEntropyTask):
    def __init__(self, ctx: Context, classifier, lam: float):
        super().__init__(ctx, classifier)
        self.lam = lam
        # (parameter, its pretrained value) for every trained encoder weight
        self.anchors = [
            (p, p.detach().clone())
            for name, p in classifier.clip.named_parameters()
            if p.requires_grad
        ]

    def loss(self, batch):
        penalty = sum(((p - p0) ** 2).sum() for p, p0 in self.anchors)
        return super().loss(batch) + self.lam * penalty


@register_method("l2sp")
class L2SP(Method):
    description = "FT + lambda * ||theta - theta_pretrained||^2 on the image encoder"
    options = (Option("lambda", float, default=0.1, minimum=0),)

    def task(self, ctx: Context) -> L2SPTask:
        ft = FullFinetune().task(ctx)
        return L2SPTask(ctx, ft.module, self.option(ctx, "lambda"))
