"""Flax ports of the Keras-applications ImageNet CNNs (docs/theory.md, section 1).

One module per family (:mod:`.vgg`, :mod:`.resnet`, :mod:`.xception`, :mod:`.inception`,
:mod:`.mobilenet`), Keras-exact layers in :mod:`.layers`, and the registry
(:func:`get`, :func:`apply`, :func:`preprocess`) in :mod:`.registry`::

    spec = models.get("mobilenet", alpha=0.75)
    params = weights.load(spec, "mobilenet_7_5_224_tf.h5")   # {layer: {var: array}}
    logits = models.apply(spec, params, models.preprocess(images_uint8, spec.preprocess_mode))
"""

from paper_repro.feedforward.models.registry import (
    CAFFE_MEAN_BGR,
    ModelSpec,
    WeightsFile,
    apply,
    get,
    make_apply,
    names,
    preprocess,
)

__all__ = [
    "CAFFE_MEAN_BGR",
    "ModelSpec",
    "WeightsFile",
    "apply",
    "get",
    "make_apply",
    "names",
    "preprocess",
]
