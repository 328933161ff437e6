"""Probes: the classifiers trained on frozen features, and fine-tuning of a whole model.

- `linear`: the linear probe (Newton-CG, L2 chosen on a hold-out).
- `heads`: linear and MLP heads trained with the paper's SGD schedule.
- `svm`: linear SVMs (one-vs-rest, squared hinge) with cross-validated cost.
- `knn`: weighted k-nearest-neighbour classification.
- `finetune`: fine-tuning a SavedModel for classification or segmentation.
"""
