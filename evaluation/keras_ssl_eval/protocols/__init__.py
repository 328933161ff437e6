"""Protocols: what runs the probes on which layers, and the whole evaluation.

- `evaluate`: `evaluate`, every requested protocol on every layer of every model.
- `per_layer`: one function per protocol on one layer's features.
- `lowshot`: Goyal's low-shot protocol (k labelled examples per class).
- `utility`: Newell & Deng's utility of pretraining, from two fine-tuning curves.

Their settings are the dataclasses of `keras_ssl_eval.settings`.
"""
