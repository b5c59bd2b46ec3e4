// TEMPORARY entry point of `ttt-stress-dev` (see CMakeLists.txt here): `ttt stress` replaces it.
#include "cli/stress.h"

int main(int argc, char** argv) { return ttt::cli::RunStress(argc, argv); }
