"""Classifying images with an exported network: :class:`Predictor`.

>>> predictor = bmxnet_ext.Predictor("out/meliusnet22")
>>> for result in predictor.predict_files(["cat.jpg", "dog.png"], topk=3):
...     print(result.path, result.top)        # [("tabby", 0.61), ("tiger_cat", 0.22), ...]

The export's model card (``{prefix}-model.json``) says how to preprocess images (input size,
per-channel mean and standard deviation, and so the number of channels) and names the classes.
Images go through :func:`bmxnet_ext.utils.imagenet.eval_transform`, the transform validation
uses during training, so the network sees the pixels it was evaluated on.
"""
import io
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import mxnet as mx
import numpy as np

from ..utils.imagenet import IMAGENET_MEAN, IMAGENET_STD, eval_transform
# The lock load_xnor's networks push their operators under: preprocessing pushes operators too
# (decoding, eval_transform), and one process-wide lock is the one mechanism against MXNet
# 1.9.1's deadlock on concurrent pushes.
from .threads import push_lock
from .converter import load_xnor
from .model_card import ModelFileError, card_path, read_model_card

__all__ = ["Predictor", "Prediction", "ImageReadError", "DamagedImageWarning"]


class ImageReadError(ValueError):
    """An image file that cannot be decoded (not an image, empty, damaged beyond decoding)."""


class DamagedImageWarning(UserWarning):
    """An image file that decodes only partly (e.g. truncated); it is predicted all the same."""


@dataclass(frozen=True)
class Prediction:
    """The result for one image.

    Attributes
    ----------
    path : str or None
        The image file (None for :meth:`Predictor.predict_arrays`).
    top : tuple of (str, float)
        ``(class name, probability)`` pairs, most probable first; class names are the card's
        ``class_names``, or the class indices as strings when it has none. Empty on error.
    indices : tuple of int
        The class indices of ``top``.
    error : str or None
        Why the image could not be predicted (only with ``errors="report"``).
    warning : str or None
        A problem that did not stop the prediction, e.g. a truncated file.
    """

    path: Optional[str]
    top: Tuple[Tuple[str, float], ...] = ()
    indices: Tuple[int, ...] = ()
    error: Optional[str] = None
    warning: Optional[str] = None

    def to_dict(self):
        """A JSON-ready dict: path, top (list of {class, index, probability}), error, warning."""
        return {"path": self.path, "error": self.error, "warning": self.warning,
                "top": [{"class": name, "index": index, "probability": prob}
                        for (name, prob), index in zip(self.top, self.indices)]}


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


_PILLOW_FLAG_LOCK = threading.Lock()


def _damage(data):
    """Why Pillow cannot fully decode ``data`` when it recognizes the format, else None.

    Decoding itself is left to MXNet (OpenCV, as the training pipelines decode), which fills in
    what is missing of a truncated JPEG without a word; Pillow is only asked whether the file
    is complete. A format Pillow does not know is left to OpenCV to accept or refuse.
    """
    from PIL import Image, ImageFile

    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 (not a format Pillow knows)
        return None
    # gluoncv sets Pillow's process-wide LOAD_TRUNCATED_IMAGES on import (gluoncv.data.mhp),
    # which makes a truncated file load without a word: the check turns it off while it runs.
    with _PILLOW_FLAG_LOCK:
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale, reading every byte
            image.load()
        except Exception as err:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ...)
            return str(err) or type(err).__name__
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return None


class Predictor:
    """Top-k classes of images from an exported network, packed or float.

    Parameters
    ----------
    prefix : str
        The export prefix: ``{prefix}-symbol.json`` and ``{prefix}-0000.params`` (written by
        ``export`` of a network, converted or not), loaded with :func:`bmxnet_ext.load_xnor`,
        and ``{prefix}-model.json``, the model card with the preprocessing and class names.
        Without a card the network is assumed to take ImageNet-normalized RGB images of
        ``input_size`` pixels and a warning says so.
    ctx : mx.Context
        Where the network runs (the packed operators are CPU operators).
    batch_size : int
        Images per forward pass. Results do not depend on it beyond float rounding (MXNet's
        float layers may round differently for another batch shape; about 1e-7 relative).
    input_size : int, optional
        Height = width of the network input for an export without a model card (default 224).
        With a card the card decides; a different value is refused.

    Several threads may call one Predictor at once and get what serial calls give: operators
    are pushed to MXNet's engine under the lock the networks of :func:`bmxnet_ext.load_xnor`
    use (MXNet 1.9.1 deadlocks on concurrent pushes); decoding and waiting happen outside it.

    A card that says ``"trained": false`` (random weights) draws a warning when the Predictor
    is made.

    Attributes: ``prefix``, ``card`` (dict or None), ``input_size``, ``mean``, ``std``,
    ``channels`` (1: images are read as grayscale, 3: RGB), ``classes``, ``class_names``.
    """

    def __init__(self, prefix, ctx=mx.cpu(), batch_size=32, input_size=None):
        self.prefix = str(prefix)
        self.batch_size = _positive("batch_size", batch_size)
        if input_size is not None:
            input_size = _positive("input_size", input_size)
        self.ctx = ctx
        self._net = load_xnor(self.prefix, ctx=ctx)
        self.card = read_model_card(self.prefix)
        if self.card is None:
            self.input_size = input_size or 224
            self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
            warnings.warn(f"{card_path(self.prefix)} does not exist: assuming RGB input of "
                          f"{self.input_size}x{self.input_size} pixels normalized with the "
                          "ImageNet mean and std, and unnamed classes", stacklevel=2)
        else:
            self.input_size = int(self.card["input_size"])
            if input_size is not None and input_size != self.input_size:
                raise ValueError(f"input_size={input_size} differs from the input size "
                                 f"{self.input_size} that {card_path(self.prefix)} gives; "
                                 "leave input_size out for an export with a model card")
            self.mean, self.std = list(self.card["mean"]), list(self.card["std"])
        self.channels = len(self.mean)
        if self.channels not in (1, 3) or len(self.std) != self.channels:
            raise ModelFileError(f"{card_path(self.prefix)} has mean {self.mean} and std "
                                 f"{self.std}: Predictor reads images with 1 (grayscale) or 3 "
                                 "(RGB) channels, one mean and one std each")
        self._transform = eval_transform(self.input_size, self.mean, self.std,
                                         self.card.get("resize") if self.card else None)
        self.classes = self._count_outputs()
        names = self.card.get("class_names") if self.card else None
        if names is not None and len(names) != self.classes:
            raise ModelFileError(f"{card_path(self.prefix)} has {len(names)} class names but the "
                                 f"network has {self.classes} outputs; fix or remove class_names")
        self.class_names = [str(name) for name in names] if names else None
        if self.card is not None and self.card.get("trained") is False:
            warnings.warn(f"{card_path(self.prefix)} says the weights of {self.prefix} were "
                          "never trained (random): its predictions mean nothing", stacklevel=2)

    def __repr__(self):
        return (f"Predictor({self.prefix!r}, input {self.channels}x{self.input_size}x"
                f"{self.input_size}, {self.classes} classes)")

    def _count_outputs(self):
        shape = (1, self.channels, self.input_size, self.input_size)
        try:
            out = self._net(mx.nd.zeros(shape, ctx=self.ctx)).asnumpy()
        except mx.base.MXNetError as err:
            last = [line for line in str(err).splitlines() if line.strip()][-1:]
            raise ModelFileError(f"the network in {self.prefix}-symbol.json does not take input "
                                 f"of shape {shape} ({' '.join(last)}); fix input_size, mean "
                                 f"and std in {card_path(self.prefix)}") from err
        if out.ndim != 2:
            raise ModelFileError(f"the network in {self.prefix}-symbol.json returns shape "
                                 f"{out.shape}, not (batch, classes): it is no classifier")
        return out.shape[1]

    # --- reading images -------------------------------------------------------------------------

    def read_image(self, path):
        """``(image, warning)``: the decoded HWC uint8 NDArray of the file at ``path`` (C =
        ``channels``) and None, or a message when the file decodes only partly.

        Raises FileNotFoundError for no file and :class:`ImageReadError` for one that does not
        decode.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no image file at {path}")
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise ImageReadError(f"cannot read {path} as an image: the file is empty")
        flag = 1 if self.channels == 3 else 0
        try:
            with push_lock():
                image = mx.image.imdecode(data, flag=flag)
            image.wait_to_read()  # OpenCV decodes asynchronously; its failure surfaces here
        except mx.base.MXNetError as err:
            raise ImageReadError(f"cannot read {path} as an image (a damaged file or not an "
                                 "image)") from err
        damage = _damage(data)
        warning = None
        if damage is not None:
            warning = (f"the file is damaged or truncated ({damage}); predicted from what "
                       "decodes of it")
        return image, warning

    def _check_array(self, i, image):
        if isinstance(image, mx.nd.NDArray):
            image = image.asnumpy()
        image = np.asarray(image)
        if image.ndim == 2 and self.channels == 1:
            image = image[:, :, None]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != self.channels:
            raise ValueError(f"images[{i}] must be a decoded uint8 image of shape (H, W, "
                             f"{self.channels}), got {image.dtype} of shape {image.shape}")
        if 0 in image.shape:
            raise ValueError(f"images[{i}] is empty (shape {image.shape})")
        return image

    # --- predicting -----------------------------------------------------------------------------

    def _top(self, probs, topk):
        order = np.argsort(-probs, kind="stable")[:topk]
        names = self.class_names
        top = tuple((names[i] if names else str(i), float(probs[i])) for i in order)
        return top, tuple(int(i) for i in order)

    def _probabilities(self, images):
        """Class probabilities (N, classes) of decoded HWC uint8 images (NDArray or numpy),
        batch by batch."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            with push_lock():
                chunk = [image if isinstance(image, mx.nd.NDArray)
                         else mx.nd.array(image, dtype=np.uint8) for image in chunk]
                batch = mx.nd.stack(*[self._transform(image) for image in chunk])
                logits = self._net(batch.as_in_context(self.ctx))
            out.append(_softmax(logits.asnumpy().astype(np.float64)))
        return np.concatenate(out) if out else np.zeros((0, self.classes))

    def predict_arrays(self, images, topk=5):
        """Predictions for decoded images.

        ``images`` is a sequence of uint8 arrays (numpy or NDArray) of shape ``(H, W, C)``, any
        ``H`` and ``W``, ``C`` = :attr:`channels` in RGB order (``(H, W)`` also for grayscale).
        Returns one :class:`Prediction` per image (``path`` None), in order, each with the
        ``topk`` most probable classes (all of them when ``topk`` exceeds :attr:`classes`).
        """
        topk = _positive("topk", topk)
        arrays = [self._check_array(i, image) for i, image in enumerate(images)]
        probs = self._probabilities(arrays)
        return [Prediction(None, *self._top(p, topk)) for p in probs]

    def predict_files(self, paths, topk=5, errors="raise"):
        """Predictions for image files, one :class:`Prediction` per path, in order.

        Parameters
        ----------
        paths : sequence of str or path-like
            Image files in any format OpenCV decodes (JPEG, PNG, BMP, ...). They are read
            ``batch_size`` at a time.
        topk : int
            Classes per image, most probable first.
        errors : ``"raise"`` or ``"report"``
            ``"raise"``: a missing file raises FileNotFoundError, one that does not decode
            :class:`ImageReadError`, and a damaged file that decodes in part is predicted with a
            :class:`DamagedImageWarning`. ``"report"``: nothing is raised or warned; the
            Prediction of a failed file has ``error`` set (and no classes), a damaged one
            ``warning``.
        """
        topk = _positive("topk", topk)
        if errors not in ("raise", "report"):
            raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}")
        paths = [os.fspath(path) for path in paths]
        results = []
        for start in range(0, len(paths), self.batch_size):
            results += self._predict_chunk(paths[start:start + self.batch_size], topk, errors)
        return results

    def _predict_chunk(self, paths, topk, errors):
        results, images = [], []
        for path in paths:
            try:
                image, warning = self.read_image(path)
            except (OSError, ImageReadError) as err:
                if errors == "raise":
                    raise
                results.append(Prediction(path, error=str(err)))
                continue
            if warning is not None and errors == "raise":
                warnings.warn(f"{path}: {warning}", DamagedImageWarning, stacklevel=3)
            results.append(Prediction(path, warning=warning))
            images.append((len(results) - 1, image))
        probs = self._probabilities([image for _, image in images])
        for (i, _), p in zip(images, probs):
            results[i] = Prediction(paths[i], *self._top(p, topk), warning=results[i].warning)
        return results
