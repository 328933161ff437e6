"""Compares contrastive computations on two mirrored logical CPUs with one device.

`nt_xent`: the NT-Xent loss and its gradient w.r.t. the projections.
`stateful`: MoCo's queue and momentum encoder and NPID's memory bank after
Orbit steps on two replicas.
Prints one JSON line. Runs in its own process: logical devices must be set
before TensorFlow starts.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ssl import losses  # noqa: E402


def nt_xent():
    rng = np.random.RandomState(0)
    z1, z2 = rng.randn(8, 6).astype(np.float32), rng.randn(8, 6).astype(np.float32)

    def loss_and_grad(a, b):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = losses.nt_xent_loss(a, b, temperature=0.5)[0]
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas
        return loss, tape.gradient(scaled, [a, b])

    single_loss, (g1, g2) = loss_and_grad(z1, z2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def per_replica(ctx):
        i = ctx.replica_id_in_sync_group
        return z1[i * 4:(i + 1) * 4], z2[i * 4:(i + 1) * 4]

    v1 = strategy.experimental_distribute_values_from_function(lambda c: per_replica(c)[0])
    v2 = strategy.experimental_distribute_values_from_function(lambda c: per_replica(c)[1])
    loss, grads = strategy.run(tf.function(loss_and_grad), args=(v1, v2))
    losses_ = [float(x) for x in strategy.experimental_local_results(loss)]
    ga = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads[0])])
    gb = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads[1])])
    # Each replica's loss is the mean over its rows; the mean over replicas is the global loss.
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss_difference": abs(np.mean(losses_) - float(single_loss)),
        # The gradient of a replica's own rows, summed over replicas by all_gather's gradient.
        "max_gradient_difference": float(max(np.abs(ga - g1.numpy()).max(), np.abs(gb - g2.numpy()).max())),
        "max_gradient": float(np.abs(g1.numpy()).max()),
    }


def _moco_views(example):
    image = example["image"]
    return {"query_view": image, "key_view": tf.image.flip_left_right(image) * 0.8,
            "label": tf.cast(example["label"], tf.int32)}


def _run_method(name, strategy, weights, images, steps, synchronized_bn=True, **kwargs):
    import orbit

    from keras_ssl.backbones import build_backbone
    from keras_ssl.registry import METHODS
    from keras_ssl.training import MethodTrainer

    with strategy.scope():
        net = build_backbone(
            "resnet_v2", depth=10, widening_factor=1, small_image_stem=True,
            synchronized_bn=synchronized_bn,
        )
        method = METHODS.get(name)(net, **kwargs)
        if name == "moco":
            method.preprocess = _moco_views
        else:
            method.augment = lambda image: image  # Both runs must see the same inputs.
        examples = tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": np.arange(len(images)) % 3, "index": np.arange(len(images))}
        )
        batches = method.make_dataset(examples, len(images)).repeat()
        _, metrics = method.compute_pretext_loss(next(iter(batches)), training=False)
        if weights is not None:
            method.set_weights(weights)
        method.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        method.optimizer.build(method.trainable_variables)
        step = orbit.utils.create_global_step()
    if steps:  # Orbit traces its loop even for 0 steps: a built method is all a 0-step run needs.
        trainer = MethodTrainer(
            method, batches, strategy, step, ["loss", "regularization_loss", *metrics], len(images),
            steps,
        )
        trainer.train(tf.constant(steps))
    return method


def _replica_spread(variable):
    values = [v.numpy() for v in variable.value.values] if hasattr(variable.value, "values") else [variable.numpy()]
    return max(float(np.abs(v - values[0]).max()) for v in values)


def stateful():
    """MoCo's queue and key encoder, NPID's bank and Z: equal on both replicas and to one device."""
    images = np.random.RandomState(0).rand(8, 16, 16, 3).astype(np.float32)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    moco_args = dict(queue_size=12, momentum=0.9)
    weights = _run_method("moco", one, None, images[:2], 0, **moco_args).get_weights()
    single = _run_method("moco", one, weights, images, 2, **moco_args)
    mirrored = _run_method("moco", strategy, weights, images, 2, **moco_args)
    report = {
        "moco_pointer": [int(single.queue_pointer.numpy()), int(mirrored.queue_pointer.numpy())],
        "moco_queue_difference": float(np.abs(single.queue.numpy() - mirrored.queue.numpy()).max()),
        "moco_key_weight_difference": max(
            float(np.abs(a.numpy() - b.numpy()).max())
            for a, b in zip(single.key_backbone.weights, mirrored.key_backbone.weights)
        ),
        "moco_weight_difference": max(
            float(np.abs(a - b).max()) for a, b in zip(single.get_weights(), mirrored.get_weights())
        ),
        "moco_replica_spread": max(_replica_spread(v) for v in [mirrored.queue, mirrored.queue_pointer]
                                   + mirrored.key_backbone.weights),
    }
    local = dict(moco_args, synchronized_bn=False)
    weights = _run_method("moco", one, None, images[:2], 0, **local).get_weights()
    single = _run_method("moco", one, weights, images, 2, shuffle_bn_groups=2, **local)
    mirrored = _run_method("moco", strategy, weights, images, 2, shuffle_bn_groups=1, **local)
    # Trained weights and the key encoder's; not the batch-norm moving statistics, which
    # one device updates once per group and 2 replicas average over replicas.
    report["moco_shuffled_bn_weight_difference"] = max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(single.trainable_weights + single.key_backbone.trainable_weights,
                        mirrored.trainable_weights + mirrored.key_backbone.trainable_weights)
    )
    report["moco_shuffled_bn_queue_difference"] = float(
        np.abs(single.queue.numpy() - mirrored.queue.numpy()).max())
    npid_args = dict(num_examples=8, num_negatives=4, fix_normalization=False)
    initial = _run_method("npid", one, None, images[:2], 0, **npid_args)
    weights, initial_bank = initial.get_weights(), initial.memory_bank.numpy()
    single = _run_method("npid", one, weights, images, 2, **npid_args)
    npid = _run_method("npid", strategy, weights, images, 2, **npid_args)
    report["npid_replica_spread"] = max(
        _replica_spread(v) for v in [npid.memory_bank, npid.normalization_constant]
    )
    report["npid_bank_row_norms"] = np.linalg.norm(npid.memory_bank.numpy(), axis=1).round(5).tolist()
    report["npid_bank_difference"] = float(
        np.abs(single.memory_bank.numpy() - npid.memory_bank.numpy()).max())
    report["npid_bank_change"] = float(np.abs(single.memory_bank.numpy() - initial_bank).max())
    report["npid_normalization_constants"] = [float(single.normalization_constant.numpy()),
                                 float(npid.normalization_constant.numpy())]
    report["npid_weight_difference"] = max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(single.trainable_weights, npid.trainable_weights)
    )
    return report


if __name__ == "__main__":
    mode = sys.argv[1]
    print(json.dumps({"nt_xent": nt_xent, "stateful": stateful}[mode]()))
