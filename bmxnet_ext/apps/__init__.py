"""The command-line apps (``bmxnet-ext``) and the demo; they may use every other part and the
model zoo."""
