"""crop_classifier: low-resolution object-crop classifiers as a second stage for detectors.

The core (models, crops, data, engine, pipeline) never imports Detectron2; only
``crop_classifier.d2`` and the Detectron2 first stage in ``crop_classifier.detectors`` do.
"""

__version__ = "0.1.0"
