"""The digit reader's transform: each canvas cropped to the box the locator
found and resized to the digits classifier's 28x28 input.

Runs in the classifier's replicas, between the two models (the pipeline's
``transform:``): numpy in, numpy out, one request's rows at a time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from deployments.errors import BadRequest

SIZE = 28  # the digits classifier's input: float32[N, 28, 28, 1]
MIN_SIDE_PX = 4  # a smaller box holds no readable digit


def crop_digits(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``image`` ``[N, H, W, 1]`` and ``box`` ``[N, 4]`` (top, left, bottom,
    right as fractions) → the classifier's ``image`` ``[N, 28, 28, 1]``."""
    images, boxes = inputs["image"], inputs["box"]
    _, height, width, _ = images.shape
    crops = np.empty((len(images), SIZE, SIZE, 1), np.float32)
    for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
        if not np.isfinite(box).all():  # values too large for the locator's arithmetic
            raise BadRequest(f"no digit found in image {i} (the locator found no box: "
                             "pixels are expected from 0 to 1)")
        top, left, bottom, right = np.clip(box, 0.0, 1.0) * (height, width, height, width)
        if min(bottom - top, right - left) < MIN_SIDE_PX:
            raise BadRequest(f"no digit found in image {i} (the box found is "
                             f"{right - left:.1f} x {bottom - top:.1f} px)")
        canvas = Image.fromarray(image[..., 0], mode="F")
        crops[i, ..., 0] = np.asarray(canvas.resize((SIZE, SIZE), Image.BILINEAR,
                                                    box=(left, top, right, bottom)))
    return {"image": crops}
