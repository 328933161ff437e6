"""Stateless randomness keyed by what is drawn, not by when it is drawn.

A run is a function of its config and seed (docs/training.md, "Reproducibility"):

- **Per example** (inside tf.data): `keras_ssl.Method.make_dataset` runs
  `preprocess` under `seeded(seed)`, where `seed` is derived from
  `(run seed, epoch, example index)`. Each call of `next_seed` (and of
  `uniform`, `normal`, `permutation`, which use it) then returns the next seed
  of a sequence fixed by that key and by the draw's position in `preprocess`.
  The same example gets the same views eagerly, in tf.data with any
  parallelism, after a resume and on any replica.
- **Per step** (inside `train_step`): `step_seed(method, key)` is keyed by the
  optimizer step, `key` and the run seed. Draws that cover the whole global
  batch and are then sliced by `keras_ssl.cross_replica.replica_rows` are the
  same on any number of replicas.

Stateful ops (`tf.random.uniform`, `tf.image.random_flip_left_right`, Keras'
`Dropout`) draw from a generator shared by every parallel call of a tf.data
map, so what an example gets depends on thread timing; training with
`keras_ssl.train.deterministic = True` refuses a `preprocess` that uses them
(`find_stateful_random_ops`).

Rule for method authors: draw every random number outside `tf.cond` /
`tf.switch_case` branches and select with `tf.where` or the branch index, so
the position of a draw does not depend on which branch runs (eager code runs
one branch, a traced graph traces both).

Example:

>>> import tensorflow as tf
>>> with seeded(example_seed(0, 7)):
...     a = uniform([2])
>>> with seeded(example_seed(0, 7)):
...     b = uniform([2])
>>> bool(tf.reduce_all(a == b))
True
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import tensorflow as tf

__all__ = [
    "STATEFUL_RANDOM_OPS",
    "dropout",
    "example_seed",
    "find_stateful_random_ops",
    "next_seed",
    "normal",
    "permutation",
    "seeded",
    "step_seed",
    "uniform",
]

# Op types that draw from hidden generator state. Their stateless
# counterparts (StatelessRandom*, StatelessSampleDistortedBoundingBox) take
# the seed as an input and are not listed.
STATEFUL_RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal",
    "RandomShuffle", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "Multinomial",
    "RandomCrop", "SampleDistortedBoundingBox", "SampleDistortedBoundingBoxV2",
    "ParameterizedTruncatedNormal", "RandomGammaGrad", "StatefulUniform",
    "StatefulUniformInt", "StatefulUniformFullInt", "StatefulStandardNormalV2",
    "StatefulTruncatedNormal", "RandomIndexShuffle",
})

_local = threading.local()


# `tf.random.stateless_*`'s default algorithm: the device picks it (Philox on CPU and GPU).
_AUTO_SELECT = 3


class _SeedSequence:
    """Seeds `fold_in(base, 0)`, `fold_in(base, 1)`, ... in the order they are asked for.

    `stateless_fold_in(base, i)` is `[h, i]` with `h` one int32 draw from
    `base`, the same for every `i`: the sequence draws `h` once (when the
    first seed is asked for) and stacks it with each count. The seeds are
    those of `stateless_fold_in`, bit for bit, at a third of the ops, which
    is what a cheap stack such as `flip` pays for per image in tf.data.
    """

    def __init__(self, base: tf.Tensor):
        self.base = base
        self.count = 0
        self._hash = self._graph = None

    def next(self) -> tf.Tensor:
        # Drawn again in another graph (a while-loop body, a tf.function called
        # inside the block, eager code after one): a tensor of one graph cannot
        # be used in the next.
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        if self._hash is None or graph is not self._graph:
            key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=self.base)
            self._hash = tf.raw_ops.StatelessRandomUniformFullIntV2(
                shape=[], key=key, counter=counter, alg=_AUTO_SELECT, dtype=tf.int32)
            self._graph = graph
        seed = tf.stack([self._hash, tf.constant(self.count, tf.int32)])
        self.count += 1
        return seed


def _as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"A stateless seed must be int32 or int64, got {seed.dtype}.")
    return tf.cast(seed, tf.int64)


def example_seed(run_seed, *keys) -> tf.Tensor:
    """The `[2]` int64 seed of `(run_seed, *keys)`, e.g. `(seed, epoch, index)`.

    Args:
      run_seed: The run's seed (an int or an integer scalar tensor).
      *keys: Integer scalars (Python or tensors) folded in one after another.

    Returns:
      An int64 tensor of shape `[2]` for `seeded` or any `tf.random.stateless_*` op.
    """
    if _is_integer(run_seed):
        seed = np.array([0, run_seed], np.int64)
    else:
        seed = tf.stack([tf.constant(0, tf.int64), tf.cast(run_seed, tf.int64)])
    for key in keys:
        key = np.int64(key) if _is_integer(key) else tf.cast(key, tf.int64)
        if isinstance(seed, np.ndarray):
            # `stateless_fold_in(seed, key)` is `[draw(seed), key]`: a constant seed's
            # draw is made once, eagerly (even inside a tf.data map), so the map runs
            # one op per example for its index instead of three per key.
            with tf.init_scope():
                head = tf.random.experimental.stateless_fold_in(seed, np.int64(0)).numpy()[0]
            seed = (np.array([head, key], np.int64) if isinstance(key, np.int64)
                    else tf.stack([tf.constant(head, tf.int64), key]))
        else:
            seed = tf.random.experimental.stateless_fold_in(seed, key)
    return tf.convert_to_tensor(seed, tf.int64)


def _is_integer(value) -> bool:
    """Whether `value` is a Python or numpy integer (not a bool, not a tensor)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@contextlib.contextmanager
def seeded(seed):
    """Makes `next_seed` return the seed sequence of `seed` inside the block.

    Args:
      seed: A `[2]` int32/int64 tensor (see `example_seed`).

    Yields:
      None.
    """
    previous = getattr(_local, "sequence", None)
    _local.sequence = _SeedSequence(_as_seed(seed))
    try:
        yield
    finally:
        _local.sequence = previous


def next_seed() -> tf.Tensor:
    """The next `[2]` int64 seed, for any `tf.random.stateless_*` or `tf.image.stateless_*` op.

    Inside `seeded(seed)` the sequence is fixed by `seed`; outside one (say,
    calling an augmentation stack by hand) each call draws a fresh seed from
    TensorFlow's global generator, so results are random but not reproducible.
    """
    sequence = getattr(_local, "sequence", None)
    if sequence is None:
        return tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    return sequence.next()


def _is_number(value, number) -> bool:
    """Whether `value` is the Python number `number` (not a tensor, not a bool)."""
    return type(value) in (int, float) and value == number


def uniform(shape=(), minval=0.0, maxval=1.0, dtype=tf.float32) -> tf.Tensor:
    """Uniform numbers in `[minval, maxval)` from the next seed (integers for int dtypes)."""
    seed, dtype = next_seed(), tf.as_dtype(dtype)
    if dtype.is_floating and _is_number(minval, 0) and _is_number(maxval, 1):
        # `tf.random.stateless_uniform`'s numbers without its `x * (1 - 0) + 0`
        # (exact in floating point): two ops fewer per draw in tf.data.
        key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
        return tf.raw_ops.StatelessRandomUniformV2(
            shape=tf.convert_to_tensor(shape, dtype_hint=tf.int32), key=key, counter=counter,
            alg=_AUTO_SELECT, dtype=dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)


def normal(shape, mean=0.0, stddev=1.0, dtype=tf.float32) -> tf.Tensor:
    """Gaussian numbers from the next seed."""
    return tf.random.stateless_normal(shape, next_seed(), mean, stddev, dtype=dtype)


def permutation(n) -> tf.Tensor:
    """A uniformly random permutation of `range(n)` (int32) from the next seed."""
    return tf.cast(tf.argsort(tf.random.stateless_uniform([n], next_seed())), tf.int32)


def step_seed(method, key: int) -> tf.Tensor:
    """A `[2]` seed keyed by the optimizer step of `method`, `key` and the run seed.

    The same on every replica and for the same step on one device: draw for
    the whole global batch with it and take this replica's rows
    (`keras_ssl.cross_replica.replica_rows`) so the method behaves the same on
    any number of replicas.

    Args:
      method: A `keras_ssl.Method` (its `optimizer.iterations` and `seed`).
      key: An integer naming the draw, distinct for each use within a step.

    Returns:
      An int64 tensor of shape `[2]`.
    """
    optimizer = getattr(method, "optimizer", None)
    step = optimizer.iterations if optimizer is not None else 0
    return example_seed(getattr(method, "seed", 0), key, step)


def dropout(values: tf.Tensor, rate: float, seed) -> tf.Tensor:
    """Inverted dropout whose mask is drawn for the global batch, then sliced per replica.

    Keras' `Dropout` draws from a per-layer generator: every replica gets the
    same masks for its own rows, so 2 replicas differ from one device. Here
    the mask of row i depends only on `seed` and i's place in the global batch.

    Args:
      values: `[rows, ...]`, this replica's rows.
      rate: Fraction of units dropped, in [0, 1).
      seed: A `[2]` seed the same on every replica, e.g. `step_seed(method, key)`.

    Returns:
      `values` with dropped units zeroed and kept ones scaled by `1 / (1 - rate)`.
    """
    from keras_ssl.cross_replica import replica_position, replica_rows

    if rate <= 0.0:
        return values
    replicas, _ = replica_position()
    shape = tf.concat([[tf.shape(values)[0] * replicas], tf.shape(values)[1:]], 0)
    keep = replica_rows(tf.random.stateless_uniform(shape, seed)) >= rate
    return tf.where(keep, values / (1.0 - rate), tf.zeros_like(values))


def find_stateful_random_ops(fn, *args) -> list[str]:
    """Names the stateful random ops in the graph `fn(*args)` traces to.

    Args:
      fn: A function of tensors (e.g. a method's `preprocess`).
      *args: Example arguments, or `tf.TensorSpec`s, to trace it with.

    Returns:
      The sorted op types found; empty when every draw is stateless.
    """
    concrete = tf.function(fn, autograph=False).get_concrete_function(*args)
    found = set()
    graphs = [concrete.graph]
    seen = set()
    while graphs:
        graph = graphs.pop()
        if id(graph) in seen:
            continue
        seen.add(id(graph))
        for op in graph.get_operations():
            if op.type in STATEFUL_RANDOM_OPS:
                found.add(op.type)
        functions = getattr(graph, "_functions", {})
        for function in functions.values():
            inner = getattr(function, "graph", None)
            if inner is not None:
                graphs.append(inner)
    return sorted(found)
