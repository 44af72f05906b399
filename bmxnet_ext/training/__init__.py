"""Training: the loop (``fit``), the paper's recipes, RAdam, data pipelines and RecordIO,
checkpoints, training logs, distributed training and its launcher. Imports
:mod:`bmxnet_ext.binary` and :mod:`bmxnet_ext.utils`, never packed inference or the apps."""
