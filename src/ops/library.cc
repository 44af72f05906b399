// The library's one initialize() gate: MXNet calls it on mx.library.load with its version number.
#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;

MXReturnValue initialize(int version) {
  if (version >= 10900 && version < 20000) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "libbmxnet_ops.so was built for MXNet 1.9.x but was loaded into MXNet version "
               << version << "; install mxnet 1.9.1 and rebuild bmxnet_ext (pip install .)";
  return mxnet::ext::MX_FAIL;
}
