"""VICReg: invariance + variance + covariance (the reference's "feature_stats")."""

from __future__ import annotations

from mvssl_dist.losses import vicreg_loss
from mvssl_dist.methods.base import SSLMethod
from mvssl_dist.methods.registry import register


@register("vicreg", aliases=("feature_stats",))
class VICReg(SSLMethod):
    release_format = "feature_stats"
    head_widths = (1024, 1024, 2048)
    option_bounds = {  # checked by check_options
        "inv_coeff": ((">=", 0),),
        "var_coeff": ((">=", 0),),
        "cov_coeff": ((">=", 0),),
        "gamma": ((">", 0),),
    }

    def __init__(
        self,
        inv_coeff: float = 1.0,
        var_coeff: float = 1.0,
        cov_coeff: float = 1.0,
        gamma: float = 1.0,
        head_widths: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(head_widths)
        self.coeffs = {"inv_coeff": inv_coeff, "var_coeff": var_coeff, "cov_coeff": cov_coeff, "gamma": gamma}

    def compute_loss(self, views, projections, schedule, tracks=None):
        return vicreg_loss(projections, **self.coeffs)
