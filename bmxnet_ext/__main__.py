"""``python -m bmxnet_ext`` is the ``bmxnet-ext`` command."""
import sys

from bmxnet_ext.apps.cli import main

sys.exit(main())
