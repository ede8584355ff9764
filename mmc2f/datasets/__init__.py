"""Synthetic demo datasets (generators)."""
from .synthetic import (DEMO_TASKS, SEG_CLASSES, SEG_PALETTE, SHAPE_CLASSES, make_cls_dataset,
                        make_demo_data, make_det_dataset, make_seg_dataset, render_scene)

__all__ = [
    'DEMO_TASKS', 'SEG_CLASSES', 'SEG_PALETTE', 'SHAPE_CLASSES', 'make_cls_dataset',
    'make_demo_data', 'make_det_dataset', 'make_seg_dataset', 'render_scene'
]
