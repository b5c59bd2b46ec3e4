// Fixture for aten_free_check_selftest: serving code that reaches ATen through the engine's face.
#include "engine/model.h"
