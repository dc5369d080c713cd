"""Second-stage test helpers: the known-answer colour classifier in the inference form."""
from classifier_helpers import COLOURS, MeanColourNet, colour_image, inference_form  # noqa: F401  (re-used)


def colour_classifier(**meta):
    """``MeanColourNet`` in the inference form, classes ``COLOURS``, 16 px crops (extra ``meta`` keys allowed)."""
    return inference_form(MeanColourNet(), COLOURS, 16, **meta)


class ScriptedStage:
    """The second stage's shape for the tracking loop (class map ``"*=*"`` over ``classes``, crop spec, gates,
    the fusion call) with no network: subclasses script ``classify``."""

    routes = None

    def __init__(self, classes, fusion="replace", input_size=32, context=0.0, nms_thresh=0.5):
        from crop_classifier.second_stage import ClassMap, FusionRule
        from crop_classifier.structures import CropSpec

        self.class_map = ClassMap(classes, classes, "*=*")  # any detector class may become any class
        self.fusion, self.crop = fusion, CropSpec(input_size, context)
        self.rule = FusionRule(fusion, nms_thresh=nms_thresh)

    @property
    def output_class_names(self):
        return self.class_map.output_class_names

    @property
    def classifier_classes(self):
        return self.class_map.classifier_classes

    def eligible(self, boxes, det_classes, image_hw):
        from crop_classifier.crops import valid_boxes_mask

        return valid_boxes_mask(boxes, image_hw)

    def fuse(self, boxes, det_classes, det_scores, probs, classified):
        from crop_classifier.second_stage import fuse_image

        return fuse_image(boxes, det_classes, det_scores, probs, classified, self.class_map, self.rule)
