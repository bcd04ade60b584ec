#include "sample/sampler.h"
