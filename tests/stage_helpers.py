"""Second-stage test helpers: the known-answer colour classifier in the inference form."""
from classifier_helpers import COLOURS, MeanColourNet, colour_image, inference_form  # noqa: F401  (re-used)


def colour_classifier(**meta):
    """``MeanColourNet`` in the inference form, classes ``COLOURS``, 16 px crops (extra ``meta`` keys allowed)."""
    return inference_form(MeanColourNet(), COLOURS, 16, **meta)
