"""Training on any device: the trainer, optimisers, runtime, checkpoints, data loading, the
SSL views, backbones, and the pretraining / fine-tuning / evaluation stages."""
