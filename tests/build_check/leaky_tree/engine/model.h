// Fixture for aten_free_check_selftest: a public engine header that leaks LibTorch.
#pragma once
#include <ATen/ATen.h>
