"""Data: COCO-format detection data -> crop samples, synthetic scenes, crop augmentation, samplers.

    samples = load_coco_samples("annotations.json", "images/", class_names=None, min_size=8)
    dataset = CropDataset(samples, 79, context=0.1, train=True, jitter_iou=0.7,
                          transform=build_train_transform(79))
    sampler = ImageGroupedBatchSampler(samples, 32, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_identity, num_workers=2)
    for epoch in ...: sampler.set_epoch(epoch); for images, labels in loader: ...
"""
from .coco import CocoSamples, CropDataset, Sample, collate_identity, jitter_boxes, load_coco_samples, object_boxes
from .images import read_rgb
from .negatives import NEGATIVE_ANN_ID, add_negative_samples, random_negative_boxes
from .sampler import ImageGroupedBatchSampler
from .synthetic import COARSE_OF, SYNTHETIC_CLASSES, generate_scenes
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, normalize

__all__ = [
    "COARSE_OF", "CocoSamples", "CropDataset", "IMAGENET_MEAN", "IMAGENET_STD", "ImageGroupedBatchSampler",
    "SYNTHETIC_CLASSES", "Sample", "build_train_transform", "collate_identity", "generate_scenes", "jitter_boxes",
    "load_coco_samples", "normalize", "read_rgb", "NEGATIVE_ANN_ID", "add_negative_samples", "object_boxes", "random_negative_boxes",
]
