"""The fused ops. Each module holds one op: its public function, reference, checks, registration
and backend dispatch (DESIGN.md, "Ops: the contract")."""
from .bilinear_contrastive import bilinear_contrastive_loss
from .collar_vad import collar_vad_loss
from .distance_logsumexp import distance_logsumexp, distance_nll
from .fourier_crop import fourier_crop, fourier_crop_output_size
from .gabor_pool import gabor_pool
from .group_norm_film_prelu import group_norm_film_prelu
from .rotary import gather_rows_rotary, split_heads_rotary
from .kmeans import KMeansResult, kmeans
from .label_proportions import ot_pseudo_labels, proportion_loss
from .latent_attention import latent_cross_attention
from .pcen import pcen
from .reorder_channels import reorder_channels
from .rvq import RVQResult, residual_vq, rvq_decode
from .si_sdr import PITResult, neg_si_sdr_loss, pit_si_sdr, si_sdr_matrix
from .sinkhorn import SinkhornResult, log_sinkhorn_normalize, sinkhorn, sinkhorn_rank, sinkhorn_sort
from .soft_rank import soft_rank, soft_sort
from .token_attention import token_attention

__all__ = ["RVQResult", "residual_vq", "rvq_decode", "PITResult", "neg_si_sdr_loss", "pit_si_sdr", "si_sdr_matrix",
           "latent_cross_attention", "KMeansResult", "kmeans", "fourier_crop", "fourier_crop_output_size",
           "soft_rank", "soft_sort", "SinkhornResult", "log_sinkhorn_normalize", "sinkhorn", "sinkhorn_rank",
           "sinkhorn_sort", "bilinear_contrastive_loss", "gabor_pool", "pcen",
           "proportion_loss", "ot_pseudo_labels", "gather_rows_rotary",
           "split_heads_rotary", "collar_vad_loss",
           "distance_logsumexp", "distance_nll", "reorder_channels", "token_attention", "group_norm_film_prelu"]
