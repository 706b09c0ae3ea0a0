"""Evaluation of frozen backbones: features, kNN, linear probes, segmentation transfer, retrieval,
anomaly detection and reports.

Depends on ssl_distill only through backbones (load one, get features), data sources and registries;
never on objectives or the trainer. Entry points: `ssl-eval` (eval.cli) and `eval.api.evaluate`.
"""
