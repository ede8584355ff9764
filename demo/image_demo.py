#!/usr/bin/env python
"""Run an mmc2f model on one image and draw the result.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT [--out-file out.png] [--device cpu]
                              [--opacity 0.5] [--score-thr 0.3] [--topk 5]

The task follows the config's ``default_scope``:

* ``mmseg`` (SegNeXt, UperNet-Conv2Former): the predicted label map as a coloured overlay
  (``--opacity``) in the palette of the checkpoint's ``meta.dataset_meta`` (else the config's
  dataset), with class names; prints the share of pixels of each predicted class.
* ``mmdet`` (Mask R-CNN / Cascade Mask R-CNN with Conv2Former): boxes, labels and masks of the
  detections scoring at least ``--score-thr``; prints them.
* ``mmpretrain`` (Conv2Former / MSCAN classifiers): prints the ``--topk`` classes and scores and
  writes them on the image.

The output PNG (``--out-file``, default ``<image name>_<task>.png`` in the current folder) has the
input image's size. Inference runs through the packages' own APIs (``mmseg.apis.inference_model``,
``mmdet.apis.inference_detector``, mmpretrain's ``ImageClassificationInferencer``); the model is
built by :func:`mmc2f.apis.init_model`, which reads the checkpoint with ``weights_only=True`` and
fails with the names of missing / unexpected keys when it does not match the config. SegNeXt's NMF
uses ``eval_seed=0`` when the config sets none, so the output is the same on every run.
"""
import argparse
import copy
import os
import os.path as osp
import sys
from typing import List, Tuple

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmc2f.apis import ConfigError, UserError, init_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Run an mmc2f segmentor, detector or classifier on '
                                'an image and draw the result')
    p.add_argument('img', help='image file')
    p.add_argument('config', help='config file (mmseg, mmdet or mmpretrain default_scope)')
    p.add_argument('checkpoint', help='checkpoint file or URL (weights_only loading)')
    p.add_argument('--out-file', default=None,
                   help='output PNG (default: <image name>_<task>.png in the current folder)')
    p.add_argument('--device', default=None,
                   help="'cpu', 'cuda', 'cuda:1'... (default: cuda:0 if available, else cpu)")
    p.add_argument('--opacity', type=float, default=0.5,
                   help='opacity of the segmentation overlay / detection masks, in (0, 1]')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detection: minimum score of a drawn detection')
    p.add_argument('--topk', type=int, default=5, help='classification: classes to report')
    p.add_argument('--deploy', action='store_true',
                   help="mmc2f's inference path: fused kernels (switch_to_deploy of Conv2Former / "
                   'MSCAN) and, for segmentors on CPU, the network on ONNX Runtime when it is '
                   'installed: same predictions, faster on CPU')
    args = p.parse_args(argv)
    if not 0 < args.opacity <= 1:
        p.error('--opacity must be in (0, 1]')
    if args.topk < 1:
        p.error('--topk must be >= 1')
    return args


def read_image(path: str) -> np.ndarray:
    """The image as RGB uint8 ``(H, W, 3)``."""
    import mmcv
    if not osp.isfile(path):
        raise ConfigError(f'image "{path}" does not exist')
    img = mmcv.imread(path)  # BGR; None when the file is not an image OpenCV can decode
    if img is None or img.size == 0:
        raise ConfigError(f'cannot read image "{path}": not an image file OpenCV can decode '
                          '(jpg, png, bmp, tiff, webp ...)')
    return np.ascontiguousarray(img[..., ::-1])


def write_image(img_rgb: np.ndarray, out_file: str) -> None:
    import mmcv
    folder = osp.dirname(osp.abspath(out_file))
    os.makedirs(folder, exist_ok=True)
    if not mmcv.imwrite(np.ascontiguousarray(img_rgb[..., ::-1]), out_file):
        raise ConfigError(f'cannot write "{out_file}"')


# ------------------------------------------------------------------------------ segmentation
def run_seg(model, img_path: str, image: np.ndarray, out_file: str, opacity: float) -> None:
    from mmseg.apis import inference_model
    from mmseg.visualization import SegLocalVisualizer
    cfg = model.cfg
    if cfg.get('test_pipeline', None) is None:  # inference_model reads cfg.test_pipeline
        cfg.test_pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    result = inference_model(model, img_path)
    labels = result.pred_sem_seg.data.squeeze(0).cpu().numpy()
    classes = model.dataset_meta['classes']
    visualizer = SegLocalVisualizer(name='mmc2f_image_demo_seg', alpha=opacity)
    visualizer.dataset_meta = dict(classes=classes, palette=model.dataset_meta['palette'])
    visualizer.add_datasample('demo', image, result, draw_gt=False, draw_pred=True, show=False,
                              with_labels=True)
    write_image(visualizer.get_image(), out_file)
    ids, counts = np.unique(labels, return_counts=True)
    print(f'segmentation: {labels.shape[0]} x {labels.shape[1]} label map, '
          f'{len(ids)} class(es) predicted:')
    for i in np.argsort(-counts):
        name = classes[ids[i]] if ids[i] < len(classes) else str(ids[i])
        print(f'  {name}: {100.0 * counts[i] / labels.size:.1f}% of pixels')


# ------------------------------------------------------------------------------ detection
def run_det(model, img_path: str, image: np.ndarray, out_file: str, score_thr: float,
            opacity: float) -> None:
    from mmdet.apis import inference_detector
    from mmdet.utils import get_test_pipeline_cfg
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.dataset import Compose
    pipeline = [t for t in copy.deepcopy(get_test_pipeline_cfg(model.cfg))
                if t.get('type', '').split('.')[-1] != 'LoadAnnotations']
    result = inference_detector(model, img_path, test_pipeline=Compose(pipeline))
    visualizer = DetLocalVisualizer(name='mmc2f_image_demo_det', alpha=opacity)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('demo', image, result, draw_gt=False, show=False,
                              pred_score_thr=score_thr)
    write_image(visualizer.get_image(), out_file)
    inst = result.pred_instances
    keep = (inst.scores >= score_thr).nonzero().flatten().tolist()
    classes = model.dataset_meta['classes']
    has_masks = 'masks' in inst
    print(f'detection: {len(keep)} of {len(inst)} detections with score >= {score_thr}'
          + (' (boxes and masks drawn)' if has_masks else ' (boxes drawn)'))
    for i in keep[:20]:
        box = ', '.join(f'{v:.1f}' for v in inst.bboxes[i].tolist())
        label = int(inst.labels[i])
        name = classes[label] if label < len(classes) else str(label)
        print(f'  {name}: {float(inst.scores[i]):.3f}  box [{box}]')
    if len(keep) > 20:
        print(f'  ... ({len(keep) - 20} more)')


# ------------------------------------------------------------------------------ classification
def draw_topk(image: np.ndarray, lines: List[str]) -> np.ndarray:
    """Write ``lines`` in the top-left corner on a dark band; returns a new image, same size."""
    import cv2
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 500.0)
    thick = max(1, int(round(scale * 2)))
    (_, th), base = cv2.getTextSize('Ag', cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    step = th + base + 4
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in lines)
    band = out[:min(h, step * len(lines) + 4), :min(w, width + 8)]
    band[...] = (band * 0.4).astype(out.dtype)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (4, (i + 1) * step - base), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thick, cv2.LINE_AA)
    return out


def run_cls(model, img_path: str, image: np.ndarray, out_file: str, topk: int
            ) -> List[Tuple[str, float]]:
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(model, pretrained=False,
                                               classes=model.dataset_meta.get('classes'))
    # The inferencer's own steps, without the progress bar of its __call__.
    data = next(iter(inferencer.preprocess([img_path], batch_size=1)))
    result = inferencer.postprocess(inferencer.forward(data), None)[0]
    scores = np.asarray(result['pred_scores'])
    classes = model.dataset_meta.get('classes') or [str(i) for i in range(len(scores))]
    order = np.argsort(-scores, kind='stable')[:topk]
    top = [(classes[i], float(scores[i])) for i in order]
    print(f'classification: top-{len(top)} of {len(scores)} classes:')
    lines = []
    for rank, (name, score) in enumerate(top, 1):
        print(f'  {rank}. {name}: {score:.4f}')
        lines.append(f'{rank}. {name}: {score:.3f}')
    write_image(draw_topk(image, lines), out_file)
    return top


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        image = read_image(args.img)
        model = init_model(args.config, args.checkpoint, device=args.device)
        if args.deploy:
            from mmc2f.engine.deploy_hook import switch_to_deploy
            switch_to_deploy(model, backend='auto')
        task = model.task
        out_file = args.out_file or f'{osp.splitext(osp.basename(args.img))[0]}_{task}.png'
        if task == 'seg':
            run_seg(model, args.img, image, out_file, args.opacity)
        elif task == 'det':
            run_det(model, args.img, image, out_file, args.score_thr, args.opacity)
        else:
            run_cls(model, args.img, image, out_file, args.topk)
    except (UserError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {out_file}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
