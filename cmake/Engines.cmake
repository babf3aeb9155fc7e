# Engine libraries from third_party/ (fetched by scripts/bootstrap.sh):
# llama.cpp brings the one ggml that llama, mtmd, whisper and mmserve link.
set(MMSERVE_THIRD_PARTY "${PROJECT_SOURCE_DIR}/third_party")
if(NOT EXISTS "${MMSERVE_THIRD_PARTY}/llama.cpp/CMakeLists.txt"
   OR NOT EXISTS "${MMSERVE_THIRD_PARTY}/whisper.cpp/src/whisper.cpp")
  message(FATAL_ERROR "Engine sources missing in ${MMSERVE_THIRD_PARTY}: run scripts/bootstrap.sh first")
endif()

# llama.cpp: libraries only by default; its tools (llama-server, llama-mtmd-cli)
# exist as targets for the benchmarks but are built only when asked for.
set(LLAMA_BUILD_COMMON ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_TOOLS ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_SERVER ON CACHE BOOL "" FORCE)
set(LLAMA_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_APP OFF CACHE BOOL "" FORCE)
set(LLAMA_BUILD_UI OFF CACHE BOOL "" FORCE)
set(LLAMA_USE_PREBUILT_UI OFF CACHE BOOL "" FORCE) # no network at build time
set(LLAMA_OPENSSL OFF CACHE BOOL "" FORCE)
set(LLAMA_ALL_WARNINGS OFF CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS OFF CACHE BOOL "" FORCE)
set(GGML_CUDA ${MMSERVE_CUDA} CACHE BOOL "" FORCE)
if(MMSERVE_CUDA AND NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  # Build machines often have no GPU, so "native" cannot be detected: ship
  # Turing (PTX) to Hopper. Override with -DCMAKE_CUDA_ARCHITECTURES=...
  set(CMAKE_CUDA_ARCHITECTURES "75-virtual;80-real;86-real;89-real;90-real")
endif()
add_subdirectory("${MMSERVE_THIRD_PARTY}/llama.cpp" "${CMAKE_BINARY_DIR}/llama.cpp" EXCLUDE_FROM_ALL)

# whisper.cpp: only its library, compiled against llama.cpp's ggml (its own
# bundled ggml is never built, so the process has exactly one ggml).
file(STRINGS "${MMSERVE_THIRD_PARTY}/whisper.cpp/CMakeLists.txt" _whisper_project
     REGEX "project\\(\"whisper.cpp\" VERSION")
string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" MMSERVE_WHISPER_VERSION "${_whisper_project}")
add_library(whisper STATIC
  "${MMSERVE_THIRD_PARTY}/whisper.cpp/src/whisper.cpp")
target_include_directories(whisper PUBLIC
  "${MMSERVE_THIRD_PARTY}/whisper.cpp/include"
  "${MMSERVE_THIRD_PARTY}/whisper.cpp/src")
target_compile_definitions(whisper PRIVATE WHISPER_VERSION="${MMSERVE_WHISPER_VERSION}")
target_link_libraries(whisper PUBLIC ggml Threads::Threads)
set_target_properties(whisper PROPERTIES CXX_STANDARD 17)

# whisper.cpp's own CLI, server and quantizer (the reference peers of the
# parity tests and benchmarks), built only when a test or bench target needs
# them. Audio is decoded by miniaudio in common-whisper.cpp (wav/mp3/flac):
# no FFmpeg. The examples' library is not called `common`: llama.cpp has one.
set(MMSERVE_WHISPER_EXAMPLES "${MMSERVE_THIRD_PARTY}/whisper.cpp/examples")
add_library(whisper-examples-common STATIC EXCLUDE_FROM_ALL
  "${MMSERVE_WHISPER_EXAMPLES}/common.cpp"
  "${MMSERVE_WHISPER_EXAMPLES}/common-ggml.cpp"
  "${MMSERVE_WHISPER_EXAMPLES}/common-whisper.cpp"
  "${MMSERVE_WHISPER_EXAMPLES}/grammar-parser.cpp")
target_include_directories(whisper-examples-common PUBLIC "${MMSERVE_WHISPER_EXAMPLES}")
target_link_libraries(whisper-examples-common PUBLIC whisper ${CMAKE_DL_LIBS})
set_target_properties(whisper-examples-common PROPERTIES CXX_STANDARD 17)
foreach(spec "whisper-cli;cli/cli.cpp" "whisper-server;server/server.cpp" "whisper-quantize;quantize/quantize.cpp")
  list(GET spec 0 _target)
  list(GET spec 1 _source)
  add_executable(${_target} EXCLUDE_FROM_ALL "${MMSERVE_WHISPER_EXAMPLES}/${_source}")
  target_link_libraries(${_target} PRIVATE whisper-examples-common whisper Threads::Threads)
  set_target_properties(${_target} PROPERTIES CXX_STANDARD 17 RUNTIME_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/bin")
endforeach()
