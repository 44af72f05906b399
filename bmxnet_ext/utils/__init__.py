"""Helpers every concern of bmxnet_ext shares; they import nothing else from the package."""
