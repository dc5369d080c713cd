"""Data: COCO-format detection data -> crop samples, synthetic scenes, crop augmentation, samplers."""
