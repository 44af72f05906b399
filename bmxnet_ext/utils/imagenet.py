"""ImageNet input conventions: channel statistics and the evaluation transform."""

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "eval_resize", "eval_transform", "normalize_steps"]

# Per-channel (RGB) mean and standard deviation on the 0-255 scale (the paper's runs, gluoncv).
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)


def eval_resize(size):
    """Shorter side before the center crop at evaluation: ``round(size / 0.875)`` (256 for 224)."""
    return int(round(size / 0.875))


def normalize_steps(mean, std):
    """gluon transforms HWC uint8 -> CHW float32 ``(x - mean) / std`` (0-255 statistics)."""
    from mxnet.gluon.data.vision import transforms

    # ToTensor divides by 255, so the 0-255 statistics are divided too.
    return [transforms.ToTensor(),
            transforms.Normalize(tuple(m / 255 for m in mean), tuple(s / 255 for s in std))]


def eval_transform(size, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=None):
    """The evaluation transform, one decoded HWC uint8 image -> normalized CHW float32.

    Resizes the shorter side to ``resize`` (default :func:`eval_resize`), crops the center
    ``size`` x ``size`` and normalizes per channel. Validation during training and prediction
    from an exported model both use it, so a model sees the same pixels in both.
    """
    from mxnet.gluon.data.vision import transforms

    return transforms.Compose(
        [transforms.Resize(resize if resize is not None else eval_resize(size), keep_ratio=True),
         transforms.CenterCrop(size)] + normalize_steps(mean, std))
