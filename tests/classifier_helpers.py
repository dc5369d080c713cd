"""Wrap a hand-made test network into the classifier inference form the second stage takes."""
from crop_classifier.models.inference import build_inference_classifier


def inference_form(net, class_names, input_size, **meta):
    """``net`` (known answers, not fx-traceable) as an ``InferenceClassifier``: normalisation + softmax around it."""
    return build_inference_classifier(
        net, {"arch": "test", "class_names": list(class_names), "input_size": input_size, **meta}, fold_bn=False)
