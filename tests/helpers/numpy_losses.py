"""Losses written out in numpy from their formulas, the references of the loss tests.

Shared by tests/core/losses/test_losses.py and the methods' tests that use the same losses.
"""

import numpy as np


def normalize(x):
    """Rows scaled to unit L2 norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer `labels` under softmax(`logits`), from log-softmax."""
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -log_softmax[np.arange(len(labels)), labels].mean()


def _distances(e):
    return np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))


def numpy_triplet(e, labels, margin, mining):
    """The triplet loss of `keras_ssl.losses` (batch-hard or semi-hard mining), looped in numpy."""
    e = normalize(e)
    d = _distances(e)
    n = len(e)
    if mining == "batch_hard":
        out = []
        for a in range(n):
            pos = [d[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
            neg = [d[a, q] for q in range(n) if labels[q] != labels[a]]
            if pos and neg:
                out.append(max(0.0, max(pos) - min(neg) + margin))
        return np.mean(out)
    out = []
    for a in range(n):
        neg = [d[a, q] for q in range(n) if labels[q] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a] or not neg:
                continue
            farther = [x for x in neg if x > d[a, p]]
            chosen = min(farther) if farther else max(neg)
            out.append(max(0.0, d[a, p] - chosen + margin))
    return np.mean(out)


def numpy_nce(positive, noise, num_examples, temperature, z):
    """Wu et al. (2018), eq. 4-5, written out: P(i|v) = exp(v_i.f / tau) / Z, noise P_n = 1/n.

    h = P / (P + K P_n); loss = -mean over the batch of [log h(pos) + sum_k log(1 - h(noise_k))].
    """
    k = noise.shape[1]
    p_positive = np.exp(positive.astype(np.float64) / temperature) / z
    p_noise = np.exp(noise.astype(np.float64) / temperature) / z
    noise_mass = k / num_examples
    h_positive = p_positive / (p_positive + noise_mass)
    h_noise = p_noise / (p_noise + noise_mass)
    return -np.mean(np.log(h_positive) + np.sum(np.log(1.0 - h_noise), axis=1))
