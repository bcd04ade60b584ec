// The exceptions sparseinfer throws, shared by the engine (which uses them as si::Error and
// friends, cpp/src/common/errors.h) and applications that embed it (sparseinfer.h). The
// Python module maps each to a class in sparseinfer.errors. Every message names the file or
// argument at fault.
#pragma once

#include <stdexcept>
#include <string>

namespace sparseinfer {

// Base of everything the engine throws on purpose.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The file cannot be opened or mapped (missing, unreadable, a directory).
struct IoError : Error {
    using Error::Error;
};

// The file is not a well-formed GGUF file (or a tensor/metadata entry is inconsistent).
struct FormatError : Error {
    using Error::Error;
};

// The file is well formed but uses something the engine does not implement.
struct UnsupportedError : Error {
    using Error::Error;
};

// A caller passed a bad argument (unknown token id, bad sampler parameter, ...).
struct ArgumentError : Error {
    using Error::Error;
};

// More tokens than the session's context can hold.
struct ContextOverflowError : Error {
    using Error::Error;
};

// A memory request that cannot be satisfied (checked before allocating).
struct OutOfMemoryError : Error {
    using Error::Error;
};

// Work stopped early because another thread asked for it (Session::cancel).
struct CancelledError : Error {
    using Error::Error;
};

}  // namespace sparseinfer
