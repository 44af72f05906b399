"""The per-epoch training log a user looks at: ``log.csv``, ``log.json`` and ``curves.png``.

Files are rewritten whole after every epoch through :func:`~bmxnet_ext.utils.files.atomic_write`,
so a reader never sees half a row. The plot uses matplotlib's Agg canvas directly (no pyplot, no
change of the user's backend).
"""
import csv
import json
import os

from ..utils.files import atomic_write

__all__ = ["TrainingLog", "plot_curves"]


class TrainingLog:
    """Rows of per-epoch metrics (dicts with an ``"epoch"`` key), written to ``directory``.

    ``rows`` may start from a resumed checkpoint's history. Columns keep the order in which they
    first appeared (for a resumed run: the order of the ``log.csv`` already there); a column
    that appears later (e.g. validation metrics added on resume) goes after them, so existing
    rows never change their column order. ``log.json`` rows follow the same order.
    """

    def __init__(self, directory, rows=()):
        self.directory = directory
        self.rows = [dict(row) for row in rows]
        self.columns = self._existing_columns() if self.rows else []

    def _existing_columns(self):
        try:
            with open(os.path.join(self.directory, "log.csv"), newline="") as f:
                return next(csv.reader(f), [])
        except OSError:
            return []

    def append(self, row):
        """Adds an epoch's row and rewrites ``log.csv``, ``log.json`` and ``curves.png``."""
        self.rows.append(dict(row))
        self.write()

    def write(self):
        """Writes the three files for the rows so far."""
        os.makedirs(self.directory, exist_ok=True)
        for row in self.rows:
            self.columns += [key for key in row if key not in self.columns]
        columns = [key for key in self.columns if any(key in row for row in self.rows)]
        ordered = [{key: row[key] for key in columns if key in row} for row in self.rows]

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(ordered)

        def write_json(path):
            with open(path, "w") as f:
                json.dump(ordered, f, indent=1)

        atomic_write(os.path.join(self.directory, "log.csv"), write_csv)
        atomic_write(os.path.join(self.directory, "log.json"), write_json)
        atomic_write(os.path.join(self.directory, "curves.png"),
                     lambda path: plot_curves(self.rows, path))


def plot_curves(rows, path):
    """Saves a PNG of loss (left) and top-1/top-5 accuracy (right) per epoch, train and val."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    for axes, keys, title in ((loss_axes, ("train_loss", "val_loss"), "loss"),
                              (accuracy_axes, ("train_top1", "val_top1", "train_top5",
                                               "val_top5"), "accuracy")):
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, rows) if row.get(key) is not None]
            if points:
                axes.plot(*zip(*points), marker="o", label=key.replace("_", " "))
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
