// The engine's exception types: the public ones (cpp/include/sparseinfer/errors.h), named
// in the engine's namespace. The Python module maps each one to a class in
// sparseinfer.errors in one place (cpp/python/module.cpp).
#pragma once

#include "sparseinfer/errors.h"

namespace si {

using sparseinfer::ArgumentError;
using sparseinfer::CancelledError;
using sparseinfer::ContextOverflowError;
using sparseinfer::Error;
using sparseinfer::FormatError;
using sparseinfer::IoError;
using sparseinfer::OutOfMemoryError;
using sparseinfer::UnsupportedError;

}  // namespace si
