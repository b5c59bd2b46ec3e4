# Fails when serving code can reach LibTorch through a header: issue 22's rule that only engine/
# (and the LibTorch programs train/, bench/, engine tests) compile ATen. Two views:
#  1. The include graph, read from the sources: every file of the serving folders and every
#     public engine header (engine/*.h), followed through the project's quoted includes; any
#     <ATen/...>, <torch/...> or <c10/...> on the way fails, with the chain that reached it.
#  2. What the compiler saw, when BUILD_DIR is a Ninja build: the recorded dependencies
#     (ninja -t deps) of every object of the serving folders' targets.
#
#   cmake -DSOURCE_DIR=<tree> [-DBUILD_DIR=<build> -DNINJA=<ninja>] -P aten_free_check.cmake
cmake_minimum_required(VERSION 3.16)

set(kServingDirs session server http cli tools/load auth tokenizer coord util)
set(kTorchInclude "#[ \t]*include[ \t]*<((ATen|torch|c10)/[^>]*)>")

# Sets `out` to "" when `file` (relative to SOURCE_DIR) reaches no LibTorch header, else to the
# chain of includes that does. Memoised in global properties; a file being visited counts as
# clean, so include cycles end.
function(torch_chain file out)
  get_property(known GLOBAL PROPERTY "chain:${file}" SET)
  if(known)
    get_property(chain GLOBAL PROPERTY "chain:${file}")
    set(${out} "${chain}" PARENT_SCOPE)
    return()
  endif()
  set_property(GLOBAL PROPERTY "chain:${file}" "")
  get_filename_component(dir "${file}" DIRECTORY)
  file(STRINGS "${SOURCE_DIR}/${file}" lines REGEX "^[ \t]*#[ \t]*include")
  set(chain "")
  foreach(line IN LISTS lines)
    if(line MATCHES "${kTorchInclude}")
      set(chain "${file} -> <${CMAKE_MATCH_1}>")
      break()
    elseif(line MATCHES "#[ \t]*include[ \t]*\"([^\"]+)\"")
      set(included "${CMAKE_MATCH_1}")
      if(NOT EXISTS "${SOURCE_DIR}/${included}" AND EXISTS "${SOURCE_DIR}/${dir}/${included}")
        set(included "${dir}/${included}")
      endif()
      if(EXISTS "${SOURCE_DIR}/${included}" AND NOT IS_DIRECTORY "${SOURCE_DIR}/${included}")
        torch_chain("${included}" sub)
        if(sub)
          set(chain "${file} -> ${sub}")
          break()
        endif()
      endif()
    endif()
  endforeach()
  set_property(GLOBAL PROPERTY "chain:${file}" "${chain}")
  set(${out} "${chain}" PARENT_SCOPE)
endfunction()

if(NOT SOURCE_DIR)
  message(FATAL_ERROR "usage: cmake -DSOURCE_DIR=<tree> [-DBUILD_DIR=.. -DNINJA=..] -P ${CMAKE_CURRENT_LIST_FILE}")
endif()

set(globs "${SOURCE_DIR}/engine/*.h")
foreach(d IN LISTS kServingDirs)
  list(APPEND globs "${SOURCE_DIR}/${d}/*.h" "${SOURCE_DIR}/${d}/*.cc")
endforeach()
file(GLOB engine_faces RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/engine/*.h")
list(REMOVE_ITEM globs "${SOURCE_DIR}/engine/*.h")
file(GLOB_RECURSE serving RELATIVE "${SOURCE_DIR}" ${globs})
set(leaks "")
set(checked 0)
foreach(f IN LISTS engine_faces serving)
  math(EXPR checked "${checked} + 1")
  torch_chain("${f}" chain)
  if(chain)
    string(APPEND leaks "\n  ${chain}")
  endif()
endforeach()

set(object_leaks "")
set(objects_checked 0)
if(BUILD_DIR AND NINJA AND EXISTS "${BUILD_DIR}/.ninja_deps")
  execute_process(COMMAND "${NINJA}" -C "${BUILD_DIR}" -t targets all
    OUTPUT_VARIABLE targets RESULT_VARIABLE rc ERROR_QUIET)
  string(JOIN "|" dirs_regex ${kServingDirs})
  string(REGEX MATCHALL "(^|\n)(${dirs_regex})/[^:\n]*\\.o:" objects "${targets}")
  list(TRANSFORM objects REPLACE "^\n?(.*):$" "\\1")
  if(objects)
    execute_process(COMMAND "${NINJA}" -C "${BUILD_DIR}" -t deps ${objects}
      OUTPUT_VARIABLE deps ERROR_QUIET)
    string(REPLACE "\n" ";" deps "${deps}")
    set(object "")
    foreach(line IN LISTS deps)
      if(line MATCHES "^([^ \t].*\\.o): #deps")
        set(object "${CMAKE_MATCH_1}")
        math(EXPR objects_checked "${objects_checked} + 1")
      elseif(object AND line MATCHES "/(ATen|torch|c10)/")
        string(STRIP "${line}" header)
        string(APPEND object_leaks "\n  ${object} compiled ${header}")
        set(object "")  # one line per object is enough
      endif()
    endforeach()
  endif()
endif()

if(leaks OR object_leaks)
  message(FATAL_ERROR "LibTorch reaches serving code (issue 22: only engine/ and the LibTorch "
    "programs may include ATen; keep tensors behind engine/internal/):${leaks}${object_leaks}")
endif()
message(STATUS "ATen-free: ${checked} serving files and public engine headers, "
  "${objects_checked} compiled objects")
