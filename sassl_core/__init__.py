"""sassl: Stain-Adaptive Self-Supervised Learning for histopathology.

The core is what a plugin author or a lab pipeline imports: the hook specifications
(:mod:`sassl_core.hookspecs`), the registries, the config models, the stain
discriminator, the residual-learning transfer, the data layer and the training loop.
"""

from sassl_core.errors import SasslError, UserError
from sassl_core.hookspecs import hookimpl

__all__ = ["SasslError", "UserError", "hookimpl", "__version__"]
__version__ = "0.1.0"
