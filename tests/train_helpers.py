"""Tiny generated image data for the training tests: every image is one flat colour that
encodes its class and index, so a pipeline's output can be traced back to the file it read."""
import os

import cv2
import numpy as np
from mxnet.gluon import nn

CLASSES = ("ant", "bee", "cat")


def colour(label, index):
    """RGB colour of image ``index`` of class ``label`` (unique per image, 0-255)."""
    return (40 * label + 20, 9 * index + 30, 200 - 5 * index)


def write_image_folder(root, per_class=8, size=12, splits=("train", "val")):
    """``root/<split>/<class>/<index>.png`` flat-colour PNGs; returns ``root``."""
    for split in splits:
        for label, name in enumerate(CLASSES):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for index in range(per_class):
                rgb = np.empty((size, size, 3), np.uint8)
                rgb[:] = colour(label, index)
                path = os.path.join(root, split, name, f"{index:03d}.png")
                assert cv2.imwrite(path, rgb[..., ::-1])  # cv2 writes BGR
    return str(root)


def decode(batch, mean, std):
    """Per-image mean RGB of a normalized NCHW batch, back on the 0-255 scale."""
    x = batch.asnumpy()
    return x.mean(axis=(2, 3)) * np.array(std) + np.array(mean)


def tiny_net(classes=len(CLASSES)):
    """A few-parameter float network (conv, BN, pool, dense) for fast loop tests."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, padding=1, in_channels=3), nn.BatchNorm(in_channels=4),
            nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(classes, in_units=4))
    return net
