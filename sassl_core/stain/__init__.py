"""Stain: the stain discriminator and adversarial objective (paper §3.2), colour-space maths,
and the stain-transform interface used by normalisation baselines."""
