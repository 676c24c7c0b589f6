"""The method of the paper in pure torch (no files, no config objects): the source-balanced
sampler (§3.2), the stain discriminator, affinity matrix and adversarial objective (Eq. 4-6),
and the dual encoder with residual fusion (§3.3, Eq. 7-9)."""
