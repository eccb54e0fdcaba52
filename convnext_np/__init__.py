"""convnext_np: a NumPy reference implementation of ConvNeXt (Liu et al. 2022) and ConvNeXt V2
(Woo et al. 2023).

The forward pass reads top-down in :mod:`convnext_np.model`; every op's NumPy reference is in
:mod:`convnext_np.ops`; official weights load through :func:`from_pretrained`.
"""

from .checkpoints import CHECKPOINTS, Checkpoint
from .classify import Prediction, classify
from .config import VARIANTS, ConvNextConfig
from .errors import ConvNextError, ImageError, WeightsError
from .evaluate import EvaluationReport, evaluate
from .head import HeadFit, fit_head
from .loading import ConvNeXt, from_pretrained
from .model import ConvNextOutput
from .preprocess import ImageProcessor
from .version import __version__

__all__ = [
    "CHECKPOINTS", "Checkpoint", "ConvNeXt", "ConvNextConfig", "ConvNextError", "ConvNextOutput",
    "ImageError", "ImageProcessor", "Prediction", "VARIANTS", "WeightsError", "classify",
    "from_pretrained",
    "EvaluationReport", "HeadFit", "evaluate", "fit_head",
]
