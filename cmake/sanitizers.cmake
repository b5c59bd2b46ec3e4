# Sanitizer and fuzzing build modes (issue 9, "The proof"). Each applies to every target of the
# build tree, so use a separate build folder per mode:
#   TTT_SANITIZE=address,undefined   ASan + UBSan over the whole suite (GCC or Clang)
#   TTT_SANITIZE=thread              TSan, for the scheduler, session and server tests
#   TTT_FUZZ=ON                      the libFuzzer targets in tests/fuzz with ASan + UBSan
#                                    (Clang only: CC=clang-14 CXX=clang++-14)
# tests/ci_stages.sh configures and runs each. LibTorch, gRPC, Abseil and OpenBLAS come from
# Debian uninstrumented; tests/sanitizers/*.supp lists what is suppressed in them and why.
set(TTT_SANITIZE "" CACHE STRING "Sanitizers for every target: address,undefined | thread | empty")
option(TTT_FUZZ "Build the libFuzzer targets in tests/fuzz (Clang)" OFF)

# Any UBSan finding fails the run instead of printing and going on.
set(TTT_SANITIZER_FLAGS -fno-omit-frame-pointer -fno-sanitize-recover=all)

if(TTT_SANITIZE)
  if(NOT TTT_SANITIZE MATCHES "^(address|undefined|address,undefined|undefined,address|thread)$")
    message(FATAL_ERROR "TTT_SANITIZE=${TTT_SANITIZE}: use address,undefined or thread")
  endif()
  if(TTT_FUZZ)
    message(FATAL_ERROR "TTT_FUZZ brings its own sanitizers; leave TTT_SANITIZE empty")
  endif()
  add_compile_options(-fsanitize=${TTT_SANITIZE} ${TTT_SANITIZER_FLAGS})
  add_link_options(-fsanitize=${TTT_SANITIZE})
endif()

if(TTT_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "TTT_FUZZ needs Clang's libFuzzer: configure with "
                        "CC=clang-14 CXX=clang++-14 (package libclang-rt-14-dev)")
  endif()
  # Coverage instrumentation for everything; only the fuzz targets link libFuzzer's main.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined ${TTT_SANITIZER_FLAGS})
  add_link_options(-fsanitize=address,undefined)
endif()
