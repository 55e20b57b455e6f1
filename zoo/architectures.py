"""Architecture names -> the twin classes. A checkpoint's metadata can only pick a key of this table;
it never names code to import."""

from __future__ import annotations

import importlib

ARCHITECTURES: dict[str, dict[str, str]] = {
    "mlp": {"torch": "zoo.torch_models.mlp:MLP", "jax": "zoo.flax_models.mlp:MLP"},
    "cnn": {"torch": "zoo.torch_models.cnn:CNN", "jax": "zoo.flax_models.cnn:CNN"},
    "resnet": {"torch": "zoo.torch_models.resnet:ResNet", "jax": "zoo.flax_models.resnet:ResNet"},
    "rnn": {"torch": "zoo.torch_models.rnn:RNNClassifier", "jax": "zoo.flax_models.rnn:RNNClassifier"},
    "transformer": {"torch": "zoo.torch_models.transformer:TransformerClassifier",
                    "jax": "zoo.flax_models.transformer:TransformerClassifier"},
    # torchvision's classifiers: state dicts key-for-key torchvision's
    "tv_resnet": {"torch": "zoo.torch_models.tv_resnet:ResNet", "jax": "zoo.flax_models.tv_resnet:ResNet"},
    "tv_mobilenet_v3": {"torch": "zoo.torch_models.tv_mobilenet_v3:MobileNetV3", "jax": "zoo.flax_models.tv_mobilenet_v3:MobileNetV3"},
    "tv_efficientnet": {"torch": "zoo.torch_models.tv_efficientnet:EfficientNet", "jax": "zoo.flax_models.tv_efficientnet:EfficientNet"},
    "tv_convnext": {"torch": "zoo.torch_models.tv_convnext:ConvNeXt", "jax": "zoo.flax_models.tv_convnext:ConvNeXt"},
    "tv_vit": {"torch": "zoo.torch_models.tv_vit:VisionTransformer", "jax": "zoo.flax_models.tv_vit:VisionTransformer"},
}


def model_class(arch: str, backend: str, source: str = "registry"):
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    module_name, _, class_name = ARCHITECTURES[arch][backend].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
