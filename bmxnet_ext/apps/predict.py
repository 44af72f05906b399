"""``bmxnet-ext predict PREFIX INPUT...``: top-k classes of image files with an exported network.

INPUT may be an image file, a folder (searched recursively for IMAGE_EXTENSIONS, sorted) or a
glob pattern (expanded here too, so a quoted pattern works; ``**`` matches across folders).
Results go to stdout, one line per image (``PATH: name (prob), ...``) or, with ``--json``, one
JSON document at the end. A file that cannot be read is reported on its own stderr line
(``PATH: error: ...``) and the others go on; a damaged file that still decodes gets a
``PATH: warning: ...`` line and is predicted. :func:`run_predict` returns the exit status: 1
when any input failed, else 0.

The JSON document: ``{"prefix", "classes", "class_names" (list or null), "predictions": [{"path",
"top": [{"class", "index", "probability"}, ...], "warning" (str or null), "error": null}, ...],
"errors": [{"path", "error"}, ...]}``.
"""
import glob
import json
import os
import sys
import warnings

__all__ = ["IMAGE_EXTENSIONS", "expand_inputs", "run_predict"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _images_under(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, name) for name in files
                  if name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def expand_inputs(inputs):
    """``(paths, problems)``: the image paths ``inputs`` name, in the order given (a folder's
    and a pattern's sorted), and ``(input, message)`` for each input that names no image.

    An input that is neither a folder nor a pattern is passed through as a path, so that a
    missing or unreadable file is reported when it is read.
    """
    paths, problems = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = _images_under(item)
            if not found:
                problems.append((item, "no image files (" + " ".join(IMAGE_EXTENSIONS)
                                 + ") in this folder"))
            paths += found
        elif not os.path.exists(item) and any(char in item for char in "*?["):
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                found += _images_under(match) if os.path.isdir(match) else [match]
            if not found:
                problems.append((item, "no file matches this pattern"))
            paths += found
        else:
            paths.append(item)
    return paths, problems


def _one_line(message):
    return " ".join(str(message).split())


def _text_line(prediction):
    labels = ", ".join(f"{name} ({prob:.3f})" for name, prob in prediction.top)
    return f"{prediction.path}: {labels}"


def run_predict(prefix, inputs, topk=5, batch_size=32, as_json=False, input_size=None):
    """The body of ``bmxnet-ext predict``; returns the exit status (0, or 1 if an input failed).

    Errors that concern the model itself (missing or damaged export, class names that do not fit)
    are raised for the caller to report.
    """
    from ..inference.predictor import Predictor

    out, err = sys.stdout, sys.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor(prefix, batch_size=batch_size, input_size=input_size)
    for warning in caught:
        print(f"bmxnet-ext predict: warning: {_one_line(warning.message)}", file=err)

    paths, problems = expand_inputs(inputs)
    failures = [{"path": item, "error": message} for item, message in problems]
    for failure in failures:
        print(f"{failure['path']}: error: {failure['error']}", file=err)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = predictor.predict_files(paths[start:start + batch_size], topk=topk,
                                        errors="report")
        for prediction in chunk:
            if prediction.error is not None:
                failures.append({"path": prediction.path, "error": _one_line(prediction.error)})
                print(f"{prediction.path}: error: {failures[-1]['error']}", file=err)
                continue
            if prediction.warning is not None:
                print(f"{prediction.path}: warning: {_one_line(prediction.warning)}", file=err)
            if as_json:
                results.append(prediction.to_dict())
            else:
                print(_text_line(prediction), file=out, flush=True)
    if as_json:
        document = {"prefix": prefix, "classes": predictor.classes,
                    "class_names": predictor.class_names, "predictions": results,
                    "errors": failures}
        print(json.dumps(document, indent=2), file=out)
    return 1 if failures else 0
