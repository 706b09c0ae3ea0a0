"""ssl_distill: self-supervised pretraining by distillation for images, multi-view data and video."""

__version__ = "0.1.0"
