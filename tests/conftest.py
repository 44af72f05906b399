"""Shared test set-up.

The suite tests the *installed* package. A Python started with ``-c`` or ``-m`` puts its working
directory first on sys.path, so a subprocess started from the repository root would import the
unbuilt source tree's ``bmxnet_ext/`` instead; PYTHONSAFEPATH (Python >= 3.11) turns that off for
every interpreter the tests start. Tests still pass an explicit ``cwd`` where they can.
"""
import os

os.environ.setdefault("PYTHONSAFEPATH", "1")
