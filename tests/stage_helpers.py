"""Second-stage test helpers: a classifier with known answers and the scene it reads."""
import torch
from torch import nn

from classifier_helpers import inference_form

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


def colour_classifier(**meta):
    """``MeanColourNet`` in the inference form, classes ``COLOURS``, 16 px crops (extra ``meta`` keys allowed)."""
    return inference_form(MeanColourNet(), COLOURS, 16, **meta)
