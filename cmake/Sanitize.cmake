# The engine-free build for untrusted-input code: AddressSanitizer and
# UndefinedBehaviorSanitizer over mmserve_base, its unit tests and (with
# MMSERVE_FUZZ) the libFuzzer targets. llama.cpp/whisper.cpp are not
# configured at all, so a clean build compiles only mmserve's own sources.
set(_mmserve_sanitizers -fsanitize=address,undefined -fno-sanitize-recover=all)
# -O1: sanitizer runs want speed, and compile time matters more than -O3's gain.
set(_mmserve_flags ${_mmserve_sanitizers} -fno-omit-frame-pointer -O1 -g1)
if(MMSERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "MMSERVE_FUZZ needs clang for libFuzzer: "
                        "-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14")
  endif()
  # Coverage feedback in every object; only fuzz targets link libFuzzer's main().
  list(APPEND _mmserve_flags -fsanitize=fuzzer-no-link)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  # Boost 1.74 looks for clang's coroutines in libc++'s <experimental/coroutine>;
  # clang 14 in C++20 mode has them, with libstdc++'s <coroutine>.
  add_compile_definitions(BOOST_ASIO_HAS_CO_AWAIT=1)
endif()
add_compile_options(${_mmserve_flags})
add_link_options(${_mmserve_sanitizers})
