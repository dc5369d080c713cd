"""Test networks: hand-made nets with known answers in the classifier inference form, and random weights
whose outputs differ."""
import torch
from torch import nn

from benchmarks.deploy import spread_weights  # noqa: F401  (random weights whose outputs differ)
from crop_classifier.models.inference import build_inference_classifier

COLOURS = ["red", "green", "blue"]


class MeanColourNet(nn.Module):
    """A classifier whose answer is known: logits = 20 x mean of each (de-normalised) RGB channel."""

    input_size = 16

    def forward(self, x):
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return 20 * (x * std + mean).mean(dim=(2, 3))


def colour_image(h=120, w=160):
    """Black image with a red, a green and a blue 20x20 square; returns (image, boxes, colour index per box)."""
    img = torch.zeros(3, h, w, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 30, 30], [60, 40, 80, 60], [120, 90, 140, 110]])
    for c, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        img[c, y1:y2, x1:x2] = 255
    return img, boxes, torch.tensor([0, 1, 2])


def inference_form(net, class_names, input_size, **meta):
    """``net`` (known answers, not fx-traceable) as an ``InferenceClassifier``: normalisation + softmax around it."""
    return build_inference_classifier(
        net, {"arch": "test", "class_names": list(class_names), "input_size": input_size, **meta}, fold_bn=False)
