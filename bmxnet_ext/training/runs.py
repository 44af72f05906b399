"""The settings of a training run that its checkpoints record, and what a resume may change.

:func:`bmxnet_ext.training.fit.fit` stores :func:`run_settings` in every checkpoint; on resume
it compares them with the new call's (:func:`changed_settings`) and refuses a difference with
:class:`RunMismatchError`, unless every difference only changes the learning-rate schedule
(:data:`RESCHEDULABLE`) and the caller asked to reschedule: the schedule then continues at the
resumed epoch's position (:func:`shifted_schedule`).
"""
import json

__all__ = ["RESCHEDULABLE", "RunMismatchError", "run_settings", "changed_settings",
           "shifted_schedule", "show_setting"]

# Settings of a run that change only its learning-rate schedule: resuming with other values is
# allowed with ``reschedule=True``. Any other setting in ``run`` (the model, its arguments, the
# optimizer) must stay as the checkpoint's run had it.
RESCHEDULABLE = ("epochs", "iters_per_epoch", "batch_size", "lr", "schedule", "step_epochs",
                 "step_factor")


class RunMismatchError(ValueError):
    """``fit(resume=True)`` with settings other than those of the checkpoint's run.

    ``changes`` lists ``(setting, old, new)``; ``reschedulable`` is True when every change is in
    :data:`RESCHEDULABLE` (then ``reschedule=True`` continues with a recomputed schedule).
    """

    def __init__(self, directory, changes):
        self.directory, self.changes = directory, changes
        self.reschedulable = all(key in RESCHEDULABLE for key, _, _ in changes)
        listed = ", ".join(f"{key} {show_setting(old)} -> {show_setting(new)}"
                           for key, old, new in changes)
        advice = ("pass reschedule=True to continue it with a learning-rate schedule recomputed "
                  "for the new settings" if self.reschedulable else
                  "those settings cannot change when resuming; train into another out_dir")
        super().__init__(f"the checkpoint in {directory} is of a run with other settings "
                         f"({listed}); {advice}")


def show_setting(value):
    """A setting's value as JSON, as the checkpoint stores it."""
    return "(unset)" if value is None else json.dumps(value)


def run_settings(run, epochs, train_data):
    """``run`` as it reads back from JSON (tuples become lists), with epochs and steps."""
    run = dict(run or {}, epochs=epochs,
               iters_per_epoch=len(train_data) if hasattr(train_data, "__len__") else None)
    return json.loads(json.dumps(run))


def changed_settings(saved, run):
    """``(setting, old, new)`` where ``run`` differs from ``saved`` (None: a checkpoint written
    before runs were recorded, nothing to compare)."""
    if saved is None:
        return []
    keys = list(run) + [key for key in saved if key not in run]
    return [(key, saved.get(key), run.get(key)) for key in keys if saved.get(key) != run.get(key)]


def shifted_schedule(schedule, update_offset):
    """``schedule`` continuing ``update_offset`` updates further along than the optimizer's
    count; it needs an ``offset`` attribute, as gluoncv's ``LRScheduler`` (which
    :func:`bmxnet_ext.training.optim.make_lr_scheduler` returns) has."""
    if update_offset and schedule is not None:
        if not hasattr(schedule, "offset"):
            raise ValueError(f"the learning-rate schedule {type(schedule).__name__} has no "
                             "offset, so it cannot continue a rescheduled run; use gluoncv's "
                             "LRScheduler (bmxnet_ext.training.optim.make_lr_scheduler)")
        schedule.offset -= update_offset
    return schedule
