"""Runs two Orbit training steps of Rotation on one device and on two mirrored CPUs.

Prints a JSON line comparing the resulting weights. Runs in its own process
because logical devices must be configured before TensorFlow starts.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import orbit  # noqa: E402

from keras_ssl.backbones import build_backbone  # noqa: E402
from keras_ssl.registry import METHODS  # noqa: E402
from keras_ssl.training import MethodTrainer  # noqa: E402


def run(strategy, initial_weights, images):
    with strategy.scope():
        net = build_backbone(
            "resnet_v2", depth=10, widening_factor=1, small_image_stem=True, synchronized_bn=True
        )
        method = METHODS.get("rotation")(net)
        examples = tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": np.zeros(len(images), np.int64), "index": np.arange(len(images))}
        )
        batches = method.make_dataset(examples, len(images)).repeat()
        method.compute_pretext_loss(next(iter(batches)), training=False)
        method.set_weights(initial_weights)
        method.compile(optimizer=keras.optimizers.SGD(0.1))
        method.optimizer.build(method.trainable_variables)
        step = orbit.utils.create_global_step()
    trainer = MethodTrainer(
        method, batches, strategy, step, ["loss", "regularization_loss", "rotation_accuracy"],
        len(images), 2,
    )
    outputs = trainer.train(tf.constant(2))
    return method, outputs


def initial_weights():
    keras.utils.set_random_seed(0)
    net = build_backbone(
        "resnet_v2", depth=10, widening_factor=1, small_image_stem=True, synchronized_bn=True
    )
    method = METHODS.get("rotation")(net)
    method.compute_pretext_loss(
        {"images": tf.zeros((1, 4, 16, 16, 3)), "rotation": tf.zeros((1, 4), tf.int32)},
        training=False,
    )
    return method.get_weights()


images = np.random.RandomState(0).rand(8, 16, 16, 3).astype(np.float32)
weights = initial_weights()
single, single_out = run(tf.distribute.OneDeviceStrategy("/cpu:0"), weights, images)
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
mirrored, mirrored_out = run(mirrored_strategy, weights, images)
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(weights, single.get_weights()))
difference = max(
    float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights())
)
print(json.dumps({
    "replicas": mirrored_strategy.num_replicas_in_sync,
    "max_abs_weight_change": moved,
    "max_abs_weight_difference": difference,
    "loss_difference": abs(single_out["loss"] - mirrored_out["loss"]),
}))
