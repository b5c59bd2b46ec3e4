// Fixture for aten_free_check_selftest: serving code with no path to LibTorch.
#include <string>
