"""The fused ops. Each module holds one op: its public function, reference, checks, registration
and backend dispatch (DESIGN.md, "Ops: the contract")."""
from .fourier_crop import fourier_crop, fourier_crop_output_size
from .kmeans import KMeansResult, kmeans
from .latent_attention import latent_cross_attention
from .rvq import RVQResult, residual_vq, rvq_decode
from .gabor_pool import gabor_pool
from .pcen import pcen
from .si_sdr import PITResult, neg_si_sdr_loss, pit_si_sdr, si_sdr_matrix

__all__ = ["RVQResult", "residual_vq", "rvq_decode", "PITResult", "neg_si_sdr_loss", "pit_si_sdr", "si_sdr_matrix",
           "latent_cross_attention", "KMeansResult", "kmeans", "fourier_crop", "fourier_crop_output_size"]
__all__ += ["gabor_pool", "pcen"]
