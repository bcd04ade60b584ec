// The architectures, one file each (or a family to a file); architecture.cpp lists them.
#pragma once

#include "model/architecture.h"

namespace si {

extern const Architecture kLlama;   // llama.cpp: dense; PowerInfer's ReLU llama in a PWRI file
extern const Architecture kBamboo;  // PowerInfer: ReLU on gate and up, PWRI files only

}  // namespace si
